"""Value types shared by several layers (`common.types`) and how an exception reads in a log line
(`common.errors`); imports nothing else of the project."""
