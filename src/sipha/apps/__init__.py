"""Voice applications shipped with sipha; each is ``async def main(call)``."""
