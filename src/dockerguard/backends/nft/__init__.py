"""The native nftables driver (driver.py) and its pure parts: render.py, readback.py, text.py."""
