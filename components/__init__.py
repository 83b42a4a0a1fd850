"""Components of the kametrix-deploy stacks, one per module."""
