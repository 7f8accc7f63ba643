"""Sessions: one persistent sandbox per user (the manager) and the registries that record them."""
