"""avmatch pipeline stages: one module per DVC stage, exposed through the ``avmatch`` CLI."""
