"""Loaders that turn measured and published runs into (Spec, Plan) pairs to check estimates
against."""
