"""Value types shared by several layers (`common.types`); imports nothing else of the project."""
