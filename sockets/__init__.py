"""Socket.IO side of the server: authentication at connect, tenant rooms, recovery."""
