"""blastwall on Ray: placement of sandboxes on a cluster's nodes, and the SDK for Ray programs."""
