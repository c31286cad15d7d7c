#!/bin/bash
# The <edge>-boot step, over the connection pinned to the bootstrap host key: the one
# the provider's metadata serves for the VM's whole life.  Once cloud-init has finished,
# the bootstrap key leaves the edge and the install key stays (made on the edge at first
# boot, or here on an edge older than it); the <edge>-host-key step pins it to install
# the edge's pinned host key.  The install key's public half is the last line of the
# output.
set -euo pipefail

host_key=/etc/ssh/ssh_host_ed25519_key
install_key=/etc/ssh/cgnat-edge-install_ecdsa_key

if ! timeout 900 cloud-init status --wait >/dev/null 2>&1; then
  echo "cgnat-edge boot: cloud-init did not finish successfully on $(hostname)" >&2
  echo "  status: $(cloud-init status 2>&1 | tr '\n' ' ')" >&2
  echo "  see /var/log/cloud-init-output.log on the edge" >&2
  exit 1
fi
echo "cgnat-edge boot: cloud-init finished"
umask 077
[[ -f $install_key ]] || ssh-keygen -q -t ecdsa -b 256 -N '' -C cgnat-edge-install -f "$install_key"
# An edge older than the install key has an sshd drop-in that names only the host key:
# sshd must offer the install key before the bootstrap key goes (the push rewrites it).
if ! sshd -T 2>/dev/null | grep -qx "hostkey $install_key"; then
  echo "HostKey $install_key" >>/etc/ssh/sshd_config.d/50-cgnat-edge.conf
fi
sshd -t
rm -f "$host_key" "$host_key.pub"
sshd -t
systemctl reload ssh.service
echo "cgnat-edge boot: bootstrap host key retired"
cut -d' ' -f1-2 "$install_key.pub"
