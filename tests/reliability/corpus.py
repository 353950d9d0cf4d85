"""The hostile-input corpus: malformed or hostile policies, as data.

Each Case is a policy file (and any list files it names) that dockerguard must refuse with exit 2 and
one message naming the file, the line (`line`: the exact line; ANY_LINE: some line; None: no line is
expected) and the key (`key`, as printed between brackets). `special` makes the policy path something
other than a regular file. `named` is the file the message must name when it is not the policy itself
(a sources file).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANY_LINE = -1
IF = 'external_interfaces = ["eth0"]\n'  # line 1 of most cases


@dataclass(frozen=True)
class Case:
    name: str
    policy: str | bytes = ""
    key: str | None = None
    line: int | None = None
    files: dict[str, str | bytes] = field(default_factory=dict)
    special: str | None = None  # "directory", "fifo", "dev-zero", "dangling-symlink", "huge", "missing"
    named: str | None = None  # a file in `files` the message names instead of the policy


def allow(body: str) -> str:
    """A policy whose first [[allow]] table starts on line 2; `body` starts on line 3."""
    return IF + "[[allow]]\n" + body


def iface(value: str) -> Case:
    return Case(f"interface {value!r}", f"external_interfaces = [{toml_string(value)}]\n[[allow]]\nports = [80]\n",
                key="external_interfaces", line=1)


def comment(value: str, name: str) -> Case:
    return Case(f"comment {name}", allow(f"ports = [80]\ncomment = {toml_string(value)}\n"),
                key="allow[1].comment", line=4)


def port(value: str, name: str | None = None) -> Case:
    return Case(f"port {name or value}", allow(f"ports = [{value}]\n"), key="allow[1].ports", line=3)


def source(value: str, name: str | None = None) -> Case:
    return Case(f"source {name or value!r}", allow(f"ports = [80]\nsources = [{toml_string(value)}]\n"),
                key="allow[1].sources", line=4)


def netset(lines: str | bytes, bad_line: int | None, name: str) -> Case:
    """A sources_file whose line `bad_line` is refused (None: the whole file is)."""
    return Case(f"sources_file {name}", allow('ports = [80]\nsources_file = "list.netset"\n'),
                key="allow[1].sources_file", line=bad_line, files={"list.netset": lines}, named="list.netset")


def toml_string(value: str) -> str:
    """`value` as a TOML basic string, every non-printable character escaped."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F or 0x80 <= ord(char) < 0xA0 or char in "\u2028\u2029\u202e\ufeff":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


CASES: list[Case] = [
    # -- TOML syntax -----------------------------------------------------------------------------------
    Case("syntax unclosed table header", "[[allow]\nports = [80]\n", line=1),
    Case("syntax unterminated array", allow("ports = [80,\n"), line=ANY_LINE),
    Case("syntax duplicate key", IF + 'default = "drop"\ndefault = "reject"\n', line=3),
    Case("syntax bare word", IF + "backend = nft\n", line=2),
    Case("syntax unterminated string", IF + 'backend = "nft\n', line=2),
    Case("syntax raw NUL byte", IF.encode() + b'backend = "nft"\x00\n', line=2),
    Case("syntax raw newline in a string", IF + '[[allow]]\nports = [80]\ncomment = "a\nCOMMIT"\n', line=4),
    Case("syntax table redefined", IF + "[host]\n[host]\n", line=3),
    Case("syntax nested 100k deep", IF + "x = " + "[" * 100_000 + "]" * 100_000 + "\n"),
    Case("syntax dotted key 100k parts", IF + "a" + ".a" * 100_000 + " = 1\n", line=2),
    Case("syntax integer of 5000 digits", allow("ports = [" + "9" * 5000 + "]\n")),
    Case("syntax byte order mark", "\ufeff" + IF, line=ANY_LINE),
    Case("not UTF-8", IF.encode() + b'[[allow]]\nports = [80]\ncomment = "caf\xe9"\n'),
    Case("not UTF-8 UTF-16 file", IF.encode("utf-16")),
    # -- unknown keys and wrong types ------------------------------------------------------------------
    Case("unknown top-level key", IF + 'backnd = "nft"\n', key="backnd", line=2),
    Case("unknown allow key", allow("port = 80\n"), key="allow[1].port", line=3),
    Case("unknown host key", IF + "[host]\nicmp = true\n", key="host.icmp", line=3),
    Case("unknown deny key", IF + '[[deny]]\nsources = ["192.0.2.1"]\nverdict = "drop"\n', key="deny[1].verdict",
         line=4),
    Case("backend int", IF + "backend = 5\n", key="backend", line=2),
    Case("backend unknown", IF + 'backend = "pf"\n', key="backend", line=2),
    Case("default accept", IF + 'default = "accept"\n', key="default", line=2),
    Case("log_dropped string", IF + 'log_dropped = "yes"\n', key="log_dropped", line=2),
    Case("bans int", IF + "bans = 1\n", key="bans", line=2),
    Case("interfaces string", 'external_interfaces = "eth0"\n', key="external_interfaces", line=1),
    Case("interfaces empty", "external_interfaces = []\n", key="external_interfaces", line=1),
    Case("interfaces int", "external_interfaces = [0]\n", key="external_interfaces", line=1),
    Case("allow not a table array", IF + "allow = 5\n", key="allow", line=2),
    Case("allow without ports", allow('proto = "tcp"\n'), key="allow[1]", line=2),
    Case("proto icmp", allow('ports = [80]\nproto = "icmp"\n'), key="allow[1].proto", line=4),
    Case("proto number", allow("ports = [80]\nproto = 6\n"), key="allow[1].proto", line=4),
    Case("sets not a table", IF + 'sets = ["a"]\n', key="sets", line=2),
    Case("set name starts with a digit", IF + '[sets]\n1bad = ["192.0.2.1"]\n', key="sets.1bad", line=3),
    Case("set unknown", allow('ports = [80]\nsources = ["@nope"]\n'), key="allow[1].sources", line=4),
    Case("docker_socket relative", IF + 'docker_socket = "docker.sock"\n', key="docker_socket", line=2),
    Case("limit per day", allow('ports = [80]\nlimit = "5/day"\n'), key="allow[1].limit", line=4),
    Case("max_connections zero", allow("ports = [80]\nmax_connections = 0\n"), key="allow[1].max_connections",
         line=4),
    Case("max_connections bool", allow("ports = [80]\nmax_connections = true\n"), key="allow[1].max_connections",
         line=4),
    Case("deny without sources", IF + "[[deny]]\nports = [22]\n", key="deny[1]", line=2),
    Case("deny action accept", IF + '[[deny]]\nsources = ["192.0.2.1"]\naction = "accept"\n', key="deny[1].action",
         line=4),
    Case("egress action permit", IF + '[[egress]]\naction = "permit"\n', key="egress[1].action", line=3),
    Case("egress network name with '; '", IF + '[[egress]]\nnetworks = ["a; -A INPUT"]\n', key="egress[1].networks",
         line=3),
    Case("container name with quote", allow('container = "web\\" -j ACCEPT"\n'), key="allow[1].container", line=3),
    Case("label value with a newline", allow('labels = { app = "web\\n-A INPUT -j ACCEPT" }\n'),
         key="allow[1].labels", line=3),
    Case("label key with U+2028", allow('labels = { "a\\u2028b" = "web" }\n'), key="allow[1].labels", line=3),
    Case("docker_socket with a newline", IF + 'docker_socket = "/run/d.sock\\n-A INPUT"\n', key="docker_socket",
         line=2),
    Case("host icmp_echo string", IF + '[host]\nicmp_echo = "no"\n', key="host.icmp_echo", line=3),
    # -- ports at every edge ---------------------------------------------------------------------------
    port("0"),
    port("65536"),
    port("-1"),
    port('"90-80"', "reversed range"),
    port('"0-10"', "range from 0"),
    port('"65535-65536"', "range past 65535"),
    port("80.0", "float"),
    port("1e3", "float exponent"),
    port("true", "bool"),
    port('"80-"', "open range"),
    port('"-80"', "negative string"),
    port('"80x"', "trailing junk"),
    port('"\u0668\u0660"', "Arabic-Indic digits"),
    port('"80\\u2028"', "U+2028 after the number"),
    port('"' + "9" * 5000 + '"', "string of 5000 digits"),
    port("{ a = 1 }", "inline table"),
    Case("ports empty", allow("ports = []\n"), key="allow[1].ports", line=3),
    Case("container_ports without a container", allow("container_ports = [80]\n"), key="allow[1]", line=2),
    # -- addresses ---------------------------------------------------------------------------------------
    source("198.51.100.1/24", "host bits"),
    source("2001:db8::1/32", "IPv6 host bits"),
    source("::ffff:1.2.3.4", "IPv4-mapped IPv6"),
    source("::ffff:198.51.100.0/120", "IPv4-mapped IPv6 network"),
    source("fe80::1%eth0", "IPv6 zone"),
    source("198.51.100.0/33"),
    source("2001:db8::/129"),
    source("198.51.100.0/-1"),
    source("198.51.100.0/+8"),
    source("01.2.3.4", "leading zero"),
    source("198.51.100.256"),
    source("0x7f.0.0.1", "hex quad"),
    source("198.51.100.0\n/24", "newline inside"),
    source("\u0661\u0669\u0662.0.2.1", "non-ASCII digits"),
    source("192.0.2.1 -j ACCEPT", "rule text after the address"),
    source("", "empty"),
    Case("source int", allow("ports = [80]\nsources = [3221225985]\n"), key="allow[1].sources", line=4),
    Case("set member with host bits", IF + '[sets]\noffice = ["203.0.113.1/24"]\n', key="sets.office", line=3),
    # -- interface names -------------------------------------------------------------------------------
    iface("eth0+"),
    iface("eth*"),
    iface('eth"0'),
    iface("eth'0"),
    iface("!eth0"),
    iface("eth\u00e9"),
    iface("abcdefghijklmnop"),
    iface("eth0;"),
    iface("eth{0}"),
    iface("-A"),
    iface("eth0\n-A INPUT"),
    iface("eth\u2028"),
    iface("eth\u0000"),
    iface("@allow_v4_tcp"),
    iface("."),
    iface(".."),
    iface("eth0:1"),
    iface("eth 0"),
    iface("eth/0"),
    iface(""),
    Case("interface listed twice", 'external_interfaces = ["eth0", "eth0"]\n', key="external_interfaces", line=1),
    # -- comments ----------------------------------------------------------------------------------------
    comment("a\nCOMMIT\n-A INPUT -j ACCEPT", "with newline, COMMIT and -A"),
    comment('x" accept comment "y', "with quotes"),
    comment("back\\slash", "with a backslash"),
    comment("a\u2028b", "with U+2028"),
    comment("a\u2029b", "with U+2029"),
    comment("a\u0085b", "with NEL U+0085"),
    comment("a\u0000b", "with NUL"),
    comment("a\tb", "with a tab"),
    comment("\u202eevil", "with a bidi override"),
    comment("\u001b[31mred", "with an escape sequence"),
    comment("x" * 101, "of 101 characters"),
    Case("comment int", allow("ports = [80]\ncomment = 5\n"), key="allow[1].comment", line=4),
    Case("deny comment with newline", IF + '[[deny]]\nsources = ["192.0.2.1"]\ncomment = "a\\n-A INPUT -j ACCEPT"\n',
         key="deny[1].comment", line=4),
    Case("egress comment with U+2028", IF + '[[egress]]\ncomment = "a\\u2028COMMIT"\n', key="egress[1].comment",
         line=3),
    # -- sources files (FireHOL / ipset netsets) -------------------------------------------------------
    netset("192.0.2.1\n198.51.100.0/24 -A INPUT -j ACCEPT\n", 2, "rule text on a line"),
    netset("192.0.2.1\nCOMMIT\n", 2, "COMMIT line"),
    netset("# list\n{ 192.0.2.1 }\n", 2, "braces"),
    netset("192.0.2.1\n192.0.2.2\x00\n", 2, "NUL"),
    netset("192.0.2.1\u2028203.0.113.1\n", 1, "U+2028 between addresses"),
    netset("192.0.2.1\n::ffff:1.2.3.4\n", 2, "IPv4-mapped IPv6"),
    netset("192.0.2.1\nfe80::1%eth0\n", 2, "IPv6 zone"),
    netset("203.0.113.1/24\n", 1, "host bits"),
    netset("192.0.2.1\n\"192.0.2.2\"\n", 2, "quoted address"),
    netset(b"192.0.2.1\n\xff\xfe\n", None, "not UTF-8"),
    netset("# nothing but comments\n; and more\n", None, "without any address"),
    Case("sources_file missing", allow('ports = [80]\nsources_file = "absent.netset"\n'),
         key="allow[1].sources_file", line=4),
    Case("sources_file /dev/zero", allow('ports = [80]\nsources_file = "/dev/zero"\n'), key="allow[1].sources_file",
         line=4),
    Case("sources_file a directory", allow('ports = [80]\nsources_file = "/"\n'), key="allow[1].sources_file",
         line=4),
    Case("sources_file path with a newline and -A", allow('ports = [80]\nsources_file = "x\\n-A INPUT -j ACCEPT"\n'),
         key="allow[1].sources_file", line=4),
    Case("sources_file path with U+2028", allow('ports = [80]\nsources_file = "x\\u2028y"\n'),
         key="allow[1].sources_file", line=4),
    Case("sources_file empty name", allow('ports = [80]\nsources_file = ""\n'), key="allow[1].sources_file", line=4),
    Case("deny sources_file with -A", IF + '[[deny]]\nsources_file = "bad.netset"\n', key="deny[1].sources_file",
         line=1, files={"bad.netset": "-A INPUT -j ACCEPT\n"}, named="bad.netset"),
    Case("egress destinations_file with COMMIT", IF + '[[egress]]\ndestinations_file = "bad.netset"\n',
         key="egress[1].sources_file", line=1, files={"bad.netset": "COMMIT\n"}, named="bad.netset"),
    # -- the policy path itself ----------------------------------------------------------------------------
    Case("path is a directory", special="directory"),
    Case("path is a FIFO", special="fifo"),
    Case("path is /dev/zero", special="dev-zero"),
    Case("path is a dangling symlink", special="dangling-symlink"),
    Case("path does not exist", special="missing"),
    Case("path is a 50 MB file", special="huge"),
    Case("path with a newline in its name", special="newline-name"),
]
