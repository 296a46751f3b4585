"""The /etc files ctrun writes for a container and bind-mounts into it: hostname, hosts
(its peers on a bridged network by name) and resolv.conf."""

import os

from ..errors import InvalidInput


def host_resolvers():
    """The host's nameservers a container can reach: loopback resolvers are skipped."""
    out = []
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and not (
                        parts[1].startswith("127.") or parts[1] == "::1"):
                    out.append(parts[1])
    except OSError:
        pass
    return out


def write_etc_files(cdir, name, hostname, net):
    """The per-container /etc/hosts, /etc/hostname and /etc/resolv.conf that get bind-mounted."""
    etc = cdir / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "hostname").write_text(hostname + "\n")
    if (net or {}).get("network") == "host":
        (etc / "hosts").write_text(open("/etc/hosts").read())
    else:
        (etc / "hosts").write_text(hosts_text(name, hostname, net, {}))
    (etc / "resolv.conf").write_text(resolv_text(net))
    for f in ("hostname", "hosts", "resolv.conf"):
        os.chmod(etc / f, 0o644)


def hosts_text(name, hostname, net, peers):
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if net and net.get("ip"):
        lines.append(f"{net['ip']}\t{hostname}" + (f" {name}" if name != hostname else ""))
    else:
        lines.append(f"127.0.1.1\t{hostname}" + (f" {name}" if name != hostname else ""))
    for ip, peer in sorted(peers.items()):
        if peer != name:
            lines.append(f"{ip}\t{peer}")
    return "\n".join(lines) + "\n"


def write_hosts(store, network):
    """Every container on `network` learns every other by name through its /etc/hosts.

    The file is bind-mounted, so it is rewritten in place (same inode), never replaced."""
    from ..config import Config
    from . import ipam
    peers = {ip: c for ip, c in ipam.leases(store, network).items() if "/" not in c}
    for ip, cname in peers.items():
        cdir = store.container_dir(cname)
        conf = Config.load(cdir)
        if conf is None:
            continue
        rewrite_in_place(cdir / "etc" / "hosts",
                         hosts_text(cname, conf.hostname or cname, conf.net, peers))


def dns_servers(net):
    """The nameservers a container is given: its --dns, else the host's reachable ones."""
    return (net or {}).get("dns") or host_resolvers()


def resolv_text(net):
    search = (net or {}).get("search") or []
    return ("".join(f"nameserver {s}\n" for s in dns_servers(net)) or "# no resolvers\n") + (
        f"search {' '.join(search)}\n" if search else "")


def check_nameservers(servers):
    import ipaddress
    for d in servers:
        try:
            ipaddress.ip_address(d)
        except ValueError:
            raise InvalidInput(f"invalid --nameserver {d!r}: give a nameserver IP address"
                               ) from None
    return list(servers)


def rewrite_in_place(path, text):
    """Rewrite a bind-mounted /etc file in place (same inode: the container sees it at
    once); the store's copy is ours, yet never follow a link there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
