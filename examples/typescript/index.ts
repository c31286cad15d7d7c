// One edge in front of a home behind CGNAT, from TypeScript, through the component
// package (`pulumi package add https://github.com/<owner>/cgnat-edge/provider@<tag>`
// generates the typed `@pulumi/cgnat-edge` SDK). See docs/package.md.
import * as pulumi from "@pulumi/pulumi";
import * as cgnatEdge from "@pulumi/cgnat-edge";

const config = new pulumi.Config();

const fleet = new cgnatEdge.EdgeFleet("fleet", {
    domain: "example.org",
    ha: false, // one edge: no second provider to fail over to
    edges: [{ name: "fsn", provider: "hetzner", location: "fsn1" }],
    sshPublicKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqxVQIfSWZkNgKOGy4QDZWNWQXUdqSrhLrsrfJKPFB+ admin@laptop"],
    sshPrivateKey: config.getSecret("sshPrivateKey"),
    homeLanPrefixes: ["192.168.1.0/24"],
    services: [{ name: "minecraft", mode: "tcp", port: "25565", target: "192.168.1.30:25565" }],
});

export const edges = fleet.edges;
export const monthlyCost = fleet.monthlyCost;
export const homeConfigs = fleet.homeConfigs; // secret
