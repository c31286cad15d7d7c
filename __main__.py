"""cgnat-edge: VPS edges you rent yourself, wired to a home behind CGNAT."""

from components import program

program.main()
