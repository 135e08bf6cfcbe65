"""The spec language: what the user wrote, validated once (units, catalog, cluster, spec)."""
