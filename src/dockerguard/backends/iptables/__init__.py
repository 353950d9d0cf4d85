"""The iptables drivers: iptables-nft (nft.py) and iptables-legacy (legacy.py), side by side on the shared
`IptablesDriver` (driver.py) and the pure rule model (rules.py)."""
