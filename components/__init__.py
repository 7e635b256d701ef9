"""commstack's ComponentResources: one module per service."""
