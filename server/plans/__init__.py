"""The individual-plan domain: identifiers, the one-plan rule, lifecycle, transfers,
notifications and completeness against the regulation. Knows nothing of Flask."""
