"""The edge role: stateful proxy, registrar and dispatcher over pools of application servers."""
