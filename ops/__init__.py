"""The operations page for platform admins (``/ops``): workers, dead letters, servers, errors.

Its blueprint is ``ops.views.bp``.
"""
