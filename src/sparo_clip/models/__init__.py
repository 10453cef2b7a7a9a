"""What a model is: the SPARO config and read-out layer, tower adapters, model classes, the builder and config registry."""
