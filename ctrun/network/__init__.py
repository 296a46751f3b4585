"""Container networking: bridges and veth links, IP leases, nftables NAT and published ports."""
