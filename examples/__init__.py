"""Examples: clients in other languages (node/, c/) and request handlers (handlers/)."""
