"""The verbs on what a store's containers share, images and networks: thin calls into
ctrun.images and ctrun.network, so that Python programs get every verb the CLI has.  No
container lifecycle here; Ctrun (ctrun.api) inherits these."""

from .errors import CtrunError


class SharedVerbs:
    store = None  # set by Ctrun

    # ---------------------------------------------------------------- networks
    def network_create(self, name, subnet, gateway=None, nat=True, **fences):
        """fences: allow_from, host_access (see networks.create)."""
        from .network import networks
        self.store.ensure()
        return networks.create(self.store, name, subnet, gateway=gateway, nat=nat, **fences)

    def network_list(self):
        from .network import ipam, networks
        out = []
        for n in networks.list_networks(self.store):
            users = sorted({c.split("/")[0] for c in ipam.leases(self.store, n["name"]).values()})
            out.append({**n, "containers": ",".join(users) or "-"})
        return out

    def network_inspect(self, name):
        from .network import ipam, networks
        n = networks.get(self.store, name, create_default=False)
        return {**n, "leases": ipam.leases(self.store, name)}

    def network_rm(self, name):
        """Refused while containers hold addresses; removes this store's bridge and rules, and
        restores ip_forward when the host's last ctrun network goes."""
        from .network import networks
        n = networks.get(self.store, name, create_default=False)
        networks.remove(self.store, name)
        networks.remove_bridge(self.store, n)
        from .network import nft
        try:
            nft.remove_network(n, last=not networks.list_networks(self.store),
                               owner=self.store.short_id)
        except CtrunError:
            if n.get("nat", True):
                raise

    # ---------------------------------------------------------------- images
    def image_build(self, name, force=False, suite=None, variant=None, include=None):
        """Build image `name` from a built-in recipe (see ctrun.images.recipe)."""
        from .images import store as images
        return images.build(self.store, name, force=force, suite=suite, variant=variant,
                            include=include)

    def image_list(self):
        from .images import store as images
        return images.list_images(self.store)

    def image_inspect(self, name):
        from .images import store as images
        return images.inspect(self.store, name)

    def image_rm(self, name, force=False):
        """Refused while containers use it, unless force."""
        from .images import store as images
        return images.remove(self.store, name, force=force)

    def image_import(self, path, name, ref=None, trusted=False):
        """A rootfs tarball, OCI layout or archive, or docker save archive as image `name`."""
        from .images import transfer
        return transfer.import_image(self.store, path, name, ref=ref, trusted=trusted)

    def image_pull(self, reference, name=None, creds=None, authfile=None, tls_verify=True,
                   platform=None, trusted=False):
        """Pull from a registry; returns the image's config (its "name" is the store's)."""
        from .images import registry
        return registry.pull(self.store, reference, name=name, creds=creds, authfile=authfile,
                             tls_verify=tls_verify, platform=platform, trusted=trusted)

    def image_export(self, name, path):
        from .images import transfer
        return transfer.export_image(self.store, name, path)
