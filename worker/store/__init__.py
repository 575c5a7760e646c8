"""State in the database: dispatches (one per accepted message), the comms_log receipt log,
contacts and parked work. SQLAlchemy 2.x Core/ORM; schema changes go through alembic migrations."""
