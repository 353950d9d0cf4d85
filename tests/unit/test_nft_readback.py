"""The nft driver's read-back normaliser against listings as different nft versions print them."""

from __future__ import annotations

from dockerguard.backends.nft.libnft import version_tuple as _version_tuple
from dockerguard.backends.nft.readback import element_texts as _element_texts
from dockerguard.backends.nft.readback import state_of as _state


def test_prefix_forms_normalise_alike() -> None:
    assert _element_texts({"concat": ["2001:db8:2::1", 22]}) == ["2001:db8:2::1/128 . 22-22"]
    assert _element_texts({"concat": [{"prefix": {"addr": "203.0.113.0", "len": 24}}, {"range": [9000, 9099]}]}) == [
        "203.0.113.0/24 . 9000-9099"]
    # an address range nft may print instead of a prefix
    assert _element_texts({"concat": [{"range": ["198.51.100.0", "198.51.100.255"]}, 80]}) == [
        "198.51.100.0/24 . 80-80"]


def test_nft_0_9_8_ipv6_prefix_listing_is_compared_by_address() -> None:
    """nft 0.9.8 lists 2001:db8:1::/48 inside a concatenation as 2001:db8:1::/64 (the kernel holds /48)."""
    sent = {"set": {"name": "allow_v6_tcp", "elem": [
        {"concat": [{"prefix": {"addr": "2001:db8:1::", "len": 48}}, 8443]},
        {"concat": [{"prefix": {"addr": "::", "len": 0}}, 443]},
        {"concat": ["2001:db8:100::7", 9100]}]}}
    listed = {"set": {"name": "allow_v6_tcp", "elem": [
        {"concat": [{"prefix": {"addr": "2001:db8:1::", "len": 64}}, 8443]},
        {"concat": [{"prefix": {"addr": "::", "len": 64}}, 443]},
        {"concat": ["2001:db8:100::7", 9100]}]}}
    assert _state([sent]) != _state([listed])  # an exact comparison would call this drift
    assert _state([sent], old_nft=True) == _state([listed], old_nft=True)
    wrong_address = {"set": {"name": "allow_v6_tcp", "elem": [
        {"concat": [{"prefix": {"addr": "2001:db8:9::", "len": 64}}, 8443]},
        {"concat": [{"prefix": {"addr": "::", "len": 64}}, 443]},
        {"concat": ["2001:db8:100::7", 9100]}]}}
    assert _state([sent], old_nft=True) != _state([wrong_address], old_nft=True)


def test_version_parsing() -> None:
    assert _version_tuple("0.9.8") < (1, 0) <= _version_tuple("1.0.6")
    assert _version_tuple("?") >= (1, 0)  # unknown: treated as a current nft
