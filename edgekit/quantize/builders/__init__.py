"""The built-in candidate builders, one precision per module; ``registry.ensure_loaded`` imports
every module here, so adding a precision is adding a file (see ``edgekit.quantize.registry``)."""
