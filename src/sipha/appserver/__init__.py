"""The application server role: honest availability signalling, drain and voice apps."""
