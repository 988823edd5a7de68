"""Interceptors of the user service, one per concern, chained in a fixed order."""
