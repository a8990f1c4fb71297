"""A measurement corpus for the scrubber, generated from a seed at run time (bench/bench_scrub.py and the tests).

Written from the published formats of each credential and identifier, not from the scrubber's rules, so it
measures them rather than mirrors them: values are built character by character from each issuer's alphabet,
length and check digits (Luhn, ISO 13616 mod-97, the CPF and BSN weights, the DNI letter), and placed in the
contexts real traces carry them in (config files, shell history, stack traces, JSON, YAML, .env, HTTP headers,
diffs, prose). No secret-shaped literal lives in this file: prefixes are joined to random bodies at run time.

Look-alikes are code-shaped strings that must survive scrubbing whole: version strings, git SHAs, digests,
UUIDs, numeric ids, Luhn-failing card-shaped numbers, template references, public keys and certificates.

A planted value counts as *caught* when no piece of it reaches the output (see ``leaked``): a password of
which only ``&3`` survived is a leak.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FIELDS", "Planted", "Sample", "generate", "leaked", "record_dicts"]

FIELDS = ("task", "code_context", "error_context", "prompt", "output", "applied_changes", "tests", "comment")

ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"
DASH5 = "-" * 5


@dataclass(frozen=True, slots=True)
class Planted:
    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One text for one record field, with what was planted in it and what must survive it."""

    text: str
    field: str
    secrets: tuple[Planted, ...] = ()
    lookalikes: tuple[str, ...] = ()


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _mixed(rng: random.Random, alphabet: str, n: int) -> str:
    """Random, but with at least one upper, one lower and one digit (real random keys of this length do)."""
    while True:
        s = _r(rng, alphabet, n)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


_WORDS = ("falcon", "maple", "orbit", "cobalt", "harbor", "velvet", "summit", "quartz", "ember", "willow", "atlas")
_USERS = ("deploy", "app", "svc_billing", "jenkins", "admin", "etl", "grafana", "alice", "bob.smith", "ci-runner")
_HOSTS = ("db.internal.example.net", "pg-prod-2.corp.example.org", "10.20.30.40", "mq.example.com", "cache-1")


def _password(rng: random.Random, symbols: str = "!@#$%^&*()-_=+[]{}<>?~.,;:") -> str:
    """A human password with symbols (Tr0ub4dor&3-style) or a generated one."""
    if rng.random() < 0.5:
        w = rng.choice(_WORDS)
        w = w[0].upper() + w[1:].replace("o", "0").replace("a", "4")
        return w + rng.choice(symbols) + str(rng.randrange(10, 9999)) + rng.choice(symbols)
    body = list(_mixed(rng, ALNUM, rng.randrange(12, 24)))
    for _ in range(rng.randrange(1, 4)):
        body.insert(rng.randrange(len(body)), rng.choice(symbols))
    return "".join(body)


def _url_password(rng: random.Random) -> str:
    return _password(rng, "!$*-_.~")


# ------------------------------------------------------------------ check-digit numbers (from their specs)


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits + "0")):
        n = int(d)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return digits + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    digits = _luhn_complete(prefix + _r(rng, "0123456789", length - len(prefix) - 1))
    amex = [digits[:4], digits[4:10], digits[10:]]
    groups = amex if length == 15 else [digits[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def _iban(rng: random.Random) -> str:
    country, bban_len = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20), ("IT", 23)])
    if country == "GB":
        bban = _r(rng, string.ascii_uppercase, 4) + _r(rng, "0123456789", 14)
    elif country == "NL":
        bban = _r(rng, string.ascii_uppercase, 4) + _r(rng, "0123456789", 10)
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + _r(rng, "0123456789", 22)
    else:
        bban = _r(rng, "0123456789", bban_len)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    value = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def _ssn(rng: random.Random) -> str:
    while True:
        area = rng.randrange(1, 900)
        if area != 666:
            break
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


def _cpf(rng: random.Random) -> str:
    d = [rng.randrange(10) for _ in range(9)]
    for n in (10, 11):
        s = sum(x * w for x, w in zip(d, range(n, 1, -1), strict=False))
        d.append((s * 10 % 11) % 10)
    s = "".join(map(str, d))
    return f"{s[:3]}.{s[3:6]}.{s[6:9]}-{s[9:]}"


def _dni(rng: random.Random) -> str:
    n = rng.randrange(10_000_000, 99_999_999)
    return f"{n}{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}"


def _sin(rng: random.Random) -> str:
    s = _luhn_complete(str(rng.randrange(1, 8)) + _r(rng, "0123456789", 7))
    return f"{s[:3]}-{s[3:6]}-{s[6:]}"


def _bsn(rng: random.Random) -> str:
    while True:
        d = [rng.randrange(10) for _ in range(8)]
        s = sum(x * w for x, w in zip(d, range(9, 1, -1), strict=True)) % 11
        if s < 10 and d[0] != 0:
            return "".join(map(str, d)) + str(s)


def _nino(rng: random.Random) -> str:
    while True:  # HMRC: D, F, I, Q, U, V never; O not second; BG, GB, KN, NK, NT, TN, ZZ not allocated
        first, second = rng.choice("ABCEGHJKLMNOPRSTWXYZ"), rng.choice("ABCEGHJKLMNPRSTWXYZ")
        if first + second not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            break
    return (
        f"{first}{second} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.choice('ABCD')}"
    )


def _phone(rng: random.Random) -> str:
    area = rng.choice(["415", "212", "646", "312", "617", "206", "303", "512"])
    exch = rng.randrange(200, 999)
    line = rng.randrange(1000, 9999)
    return rng.choice(
        [f"({area}) {exch}-{line}", f"{area}-{exch}-{line}", f"+1 {area} {exch} {line}", f"{area}.{exch}.{line}"]
    )


def _phone_intl(rng: random.Random) -> str:
    return rng.choice(
        [
            f"+44 20 7{rng.randrange(100, 999)} {rng.randrange(1000, 9999)}",
            f"+49 30 {rng.randrange(1000000, 9999999)}",
            f"+33 1 {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)}",
            # UK mobiles are 07 4-9xx; 076xx are pagers.
            f"+44 7{rng.choice([4, 5, 7, 8, 9])}{rng.randrange(10, 99)} {rng.randrange(100000, 999999)}",
        ]
    )


def _email(rng: random.Random) -> str:
    first = rng.choice(["jane", "omar", "li.wei", "p.kowalski", "maria_g", "tom", "anna-k"])
    domain = rng.choice(["acme-corp", "globex", "initech", "umbrella"])
    return f"{first}{rng.randrange(1, 999)}@{domain}.{rng.choice(['com', 'io', 'de', 'co.uk'])}"


def _ipv4(rng: random.Random) -> str:
    first = rng.choice([23, 34, 52, 81, 91, 104, 141, 185, 203])
    return f"{first}.{rng.randrange(0, 256)}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"


def _ipv6(rng: random.Random) -> str:
    return "2a0" + str(rng.randrange(1, 9)) + ":" + ":".join(_r(rng, HEX, 4) for _ in range(3)) + "::" + _r(rng, HEX, 4)


# ------------------------------------------------------------------ keys and tokens (issuer formats)


def _pem(rng: random.Random, label: str, nbytes: int) -> str:
    body = _b64(b"\x30\x82" + _bytes(rng, nbytes))
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"{DASH5}BEGIN {label}{DASH5}\n" + "\n".join(lines) + f"\n{DASH5}END {label}{DASH5}"


def _jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"}).encode())
    claims = {"sub": str(rng.randrange(10**9)), "name": rng.choice(_USERS), "iat": 1_700_000_000 + rng.randrange(10**7)}
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(_bytes(rng, 32))}"


def _putty(rng: random.Random) -> tuple[str, str]:
    private = _b64(_bytes(rng, 180))
    lines = [private[i : i + 64] for i in range(0, len(private), 64)]
    text = (
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: " + rng.choice(_USERS) + "@laptop\n"
        "Public-Lines: 2\n" + _b64(_bytes(rng, 40)) + "\n" + _b64(_bytes(rng, 11)) + "\n"
        f"Private-Lines: {len(lines)}\n" + "\n".join(lines) + "\nPrivate-MAC: " + _r(rng, HEX, 64)
    )
    return private[:64], text


def _discord_token(rng: random.Random) -> str:
    user_id = str(rng.randrange(10**17, 10**18))
    return f"{_b64url(user_id.encode())}.{_r(rng, B64URL, 6)}.{_r(rng, B64URL, 38)}"


# A kind: rng -> (the value that must not survive, a snippet that holds it).
Maker = Callable[[random.Random], tuple[str, str]]


def _ctx(*templates: str) -> Callable[[random.Random, str], str]:
    def pick(rng: random.Random, value: str) -> str:
        return rng.choice(templates).replace("{v}", value)

    return pick


def _simple(gen: Callable[[random.Random], str], *templates: str) -> Maker:
    place = _ctx(*templates)

    def make(rng: random.Random) -> tuple[str, str]:
        value = gen(rng)
        return value, place(rng, value)

    return make


_TOKEN_CONTEXTS = (
    "export {NAME}={v}",
    '{NAME}="{v}"',
    '{"{name}": "{v}"}',
    "{name}: {v}",
    "{name}: '{v}'",
    "$ curl -H 'Authorization: token {v}' https://api.example.com/v1/me",
    "headers = {'X-Auth': '{v}'}",
    '+    {name} = "{v}"',
    "raise AuthError(f'rejected credential {v}')",
    "the token {v} stopped working after the rotation",
    "os.environ['{NAME}'] = '{v}'",
)


def _token(name: str, gen: Callable[[random.Random], str]) -> Maker:
    templates = tuple(t.replace("{NAME}", name.upper()).replace("{name}", name.lower()) for t in _TOKEN_CONTEXTS)
    return _simple(gen, *templates)


def _labelled(names: tuple[str, ...], gen: Callable[[random.Random], str], extra: tuple[str, ...] = ()) -> Maker:
    """A value whose only tell is its label: config keys, env vars, JSON fields, CLI flags."""

    def make(rng: random.Random) -> tuple[str, str]:
        value = gen(rng)
        name = rng.choice(names)
        templates = (
            f"{name.upper()}={value}",
            f'{name}: "{value}"',
            f"{name}: {value}",
            f'"{name}": "{value}"',
            f"{name} = '{value}'",
            f"+{name.upper()}={value}",
            f"  {name}: {value}\n  timeout: 30",
            *extra,
        )
        return value, rng.choice(templates).replace("{v}", value)

    return make


def _aws_secret(rng: random.Random) -> str:
    return _mixed(rng, B64, 40)


def _connection(rng: random.Random) -> tuple[str, str]:
    pw = _password(rng, "!#$%^&*()-_=+.~")
    host = rng.choice(_HOSTS)
    return pw, rng.choice(
        [
            f"Server={host};Database=orders;User Id={rng.choice(_USERS)};Password={pw};Encrypt=True;",
            f"Data Source={host};Initial Catalog=crm;User ID=sa;Pwd={pw};",
            f"host={host} port=5432 dbname=app user={rng.choice(_USERS)} password={pw} sslmode=require",
            f'conn = psycopg.connect("host={host} user=etl password={pw}")',
        ]
    )


def _url_cred(scheme: str) -> Maker:
    def make(rng: random.Random) -> tuple[str, str]:
        pw = _url_password(rng)
        user = "" if scheme == "redis" and rng.random() < 0.5 else rng.choice(_USERS)
        host = rng.choice(_HOSTS)
        url = f"{scheme}://{user}:{pw}@{host}/{rng.choice(['app', 'orders', '0'])}"
        return pw, rng.choice(
            [
                f"DATABASE_URL={url}",
                f'engine = create_engine("{url}")',
                f"sqlalchemy.exc.OperationalError: could not connect to {url}",
                f"  url: {url}",
                f'"dsn": "{url}"',
            ]
        )

    return make


def _jdbc(rng: random.Random) -> tuple[str, str]:
    pw = _url_password(rng)
    return pw, f"jdbc:mysql://{rng.choice(_HOSTS)}:3306/shop?user={rng.choice(_USERS)}&password={pw}&useSSL=true"


def _mysql_cli(rng: random.Random) -> tuple[str, str]:
    pw = _password(rng, "!#%^*-_=+.~")
    user = rng.choice(_USERS)
    return pw, rng.choice(
        [
            f"$ mysql -u {user} -p{pw} -h {rng.choice(_HOSTS)} shop",
            f"mysqldump -u{user} -p{pw} --all-databases > dump.sql",
            f"mysql --user={user} --password={pw} -e 'show tables'",
            f"  1042  mysql -h db -u {user} -p'{pw}' orders",
        ]
    )


def _sshpass(rng: random.Random) -> tuple[str, str]:
    pw = _password(rng, "!#%^*-_=+.~@")
    return pw, rng.choice(
        [
            f"sshpass -p '{pw}' ssh {rng.choice(_USERS)}@{rng.choice(_HOSTS)}",
            f"$ sshpass -p {pw} scp build.tar.gz deploy@web-1:/srv",
            f'subprocess.run(["sshpass", "-p", "{pw}", "rsync", "-a", "out/", "h:/srv"])',
        ]
    )


def _curl_u(rng: random.Random) -> tuple[str, str]:
    pw = _password(rng, "!#%^*-_=+.~@")
    user = rng.choice(_USERS)
    return pw, rng.choice(
        [
            f"curl -u {user}:{pw} https://ci.example.com/api/json",
            f"$ curl -s --user '{user}:{pw}' -X POST https://nexus.example.org/upload",
            f"wget --http-user={user} --http-password={pw} https://files.example.com/a.zip",
        ]
    )


def _netrc(rng: random.Random) -> tuple[str, str]:
    pw = _password(rng, "!#%^*-_=+.~@$")
    return pw, rng.choice(
        [
            f"machine {rng.choice(_HOSTS)} login {rng.choice(_USERS)} password {pw}",
            f"machine api.example.com\n  login {rng.choice(_USERS)}\n  password {pw}\n",
        ]
    )


def _pgpass(rng: random.Random) -> tuple[str, str]:
    pw = _password(rng, "!#%^*-_=+.~@$")
    return pw, f"{rng.choice(_HOSTS)}:5432:{rng.choice(['app', '*'])}:{rng.choice(_USERS)}:{pw}"


def _docker_auth(rng: random.Random) -> tuple[str, str]:
    value = _b64(f"{rng.choice(_USERS)}:{_password(rng)}".encode())
    return value, json.dumps({"auths": {"registry.example.com": {"auth": value}}}, indent=rng.choice([None, 2]))


def _basic_header(rng: random.Random) -> tuple[str, str]:
    value = _b64(f"{rng.choice(_USERS)}:{_password(rng)}".encode())
    return value, rng.choice(
        [
            f"Authorization: Basic {value}",
            f"> GET /api HTTP/1.1\n> Host: ci.example.com\n> Authorization: Basic {value}\n> Accept: */*",
            f"headers={{'Authorization': 'Basic {value}'}}",
        ]
    )


def _kube_key(rng: random.Random) -> tuple[str, str]:
    value = _b64(_pem(rng, "RSA PRIVATE KEY", 300).encode())
    return value, (
        "users:\n- name: admin\n  user:\n    client-certificate-data: "
        + _b64(b"cert " + _bytes(rng, 30))
        + f"\n    client-key-data: {value}\n"
    )


def _pem_maker(label: str, nbytes: int) -> Maker:
    def make(rng: random.Random) -> tuple[str, str]:
        pem = _pem(rng, label, nbytes)
        body = pem.split("\n", 1)[1].rsplit("\n", 1)[0]
        return body, rng.choice(
            [
                pem,
                f"$ cat ~/.ssh/id_rsa\n{pem}",
                json.dumps({"key": pem}),
                "\n".join("+" + ln for ln in pem.split("\n")),
            ]
        )

    return make


def _gcp_sa(rng: random.Random) -> tuple[str, str]:
    pem = _pem(rng, "PRIVATE KEY", 600) + "\n"
    body = pem.split("\n", 1)[1].rsplit("\n", 2)[0]
    doc = {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": _r(rng, HEX, 40),
        "private_key": pem,
        "client_email": "svc@acme-prod.iam.gserviceaccount.com",
    }
    return body.split("\n")[0], json.dumps(doc, indent=2)


def _secret_key_base(rng: random.Random) -> tuple[str, str]:
    value = _r(rng, HEX, 128)
    return value, rng.choice(
        [f"SECRET_KEY_BASE={value}", f"secret_key_base: {value}", f"export SECRET_KEY_BASE={value}"]
    )


def _django(rng: random.Random) -> tuple[str, str]:
    value = "django-insecure-" + _r(rng, LOWER_ALNUM + "!@#%^&*(-_=+)", 50)
    return value, rng.choice([f"SECRET_KEY = '{value}'", f'SECRET_KEY="{value}"'])


def _age(rng: random.Random) -> tuple[str, str]:
    value = "AGE-SECRET-KEY-1" + _r(rng, BECH32, 58)
    return value, rng.choice(
        [f"# created: 2025-01-02\n# public key: age1{_r(rng, BECH32.lower(), 58)}\n{value}", f"SOPS_AGE_KEY={value}"]
    )


def _sas(rng: random.Random) -> tuple[str, str]:
    sig = _b64(_bytes(rng, 32)).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    url = (
        f"https://acmestore.blob.core.windows.net/backups/db.bak?sv=2022-11-02&ss=b&srt=co&sp=rl"
        f"&se=2026-01-01T00:00:00Z&st=2025-01-01T00:00:00Z&spr=https&sig={sig}"
    )
    return sig, rng.choice([url, f"AZURE_SAS_URL={url}", f"az storage blob download --blob-url '{url}'"])


def _azure_account_key(rng: random.Random) -> tuple[str, str]:
    key = _b64(_bytes(rng, 64))
    cs = (
        f"DefaultEndpointsProtocol=https;AccountName=acme{rng.randrange(99)};AccountKey={key};"
        "EndpointSuffix=core.windows.net"
    )
    return key, rng.choice([cs, f'AZURE_STORAGE_CONNECTION_STRING="{cs}"', f'"StorageConnection": "{cs}"'])


def _api_key_hex(rng: random.Random) -> tuple[str, str]:
    value = _r(rng, HEX, 64)
    return value, rng.choice(
        [f"api-key: {value}", f"X-API-Key: {value}", f"--api-key {value}", f'"apiKey": "{value}"', f"API_KEY={value}"]
    )


def _private_in_prose(rng: random.Random) -> str:
    return _mixed(rng, ALNUM, 32)


KINDS: dict[str, Maker] = {
    # ------------------------------------------------ cloud
    "aws_access_key_id": _token(
        "aws_access_key_id", lambda r: rng_prefix(r, ["AKIA", "ASIA"]) + _r(r, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    ),
    "aws_secret_key_labelled": _labelled(
        ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "secret_access_key"), _aws_secret
    ),
    "aws_secret_key_unlabelled": _simple(
        _aws_secret,
        '{"AccessKeyId": "ASIA' + "{id}" + '", "SecretAccessKey": "{v}", "Expiration": "2025-01-01T00:00:00Z"}',
        "client = boto3.client('s3', aws_secret_access_key='{v}')",
        '  "SecretAccessKey": "{v}",',
        "credentials: [default] key={v}",
    ),
    "aws_session_token": _labelled(
        ("aws_session_token", "AWS_SESSION_TOKEN"), lambda r: "IQoJb3JpZ2luX2Vj" + _r(r, B64, 300)
    ),
    "azure_storage_account_key": _azure_account_key,
    "azure_sas_signature": _sas,
    "azure_client_secret": _labelled(
        ("AZURE_CLIENT_SECRET", "client_secret", "clientSecret"),
        lambda r: _r(r, ALNUM, 3) + "8Q~" + _r(r, ALNUM + "_~.-", 31),
    ),
    "gcp_api_key": _token("google_api_key", lambda r: "AIza" + _r(r, B64URL, 35)),
    "gcp_service_account_key": _gcp_sa,
    "google_oauth_client_secret": _token("client_secret", lambda r: "GOCSPX-" + _r(r, B64URL, 28)),
    "digitalocean_token": _token("digitalocean_token", lambda r: "dop_v1_" + _r(r, HEX, 64)),
    # ------------------------------------------------ code hosting and registries
    "github_pat_classic": _token("github_token", lambda r: "ghp_" + _r(r, ALNUM, 36)),
    "github_oauth_token": _token("gh_token", lambda r: "gho_" + _r(r, ALNUM, 36)),
    "github_app_token": _token("github_token", lambda r: rng_prefix(r, ["ghs_", "ghu_", "ghr_"]) + _r(r, ALNUM, 36)),
    "github_fine_grained_pat": _token("gh_pat", lambda r: "github_pat_" + _r(r, ALNUM, 22) + "_" + _r(r, ALNUM, 59)),
    "gitlab_pat": _token("gitlab_token", lambda r: "glpat-" + _r(r, B64URL, 20)),
    "gitlab_runner_token": _token(
        "runner_token", lambda r: rng_prefix(r, ["glrt-", "gldt-", "glptt-"]) + _r(r, B64URL, 20)
    ),
    "npm_token": _simple(
        lambda r: "npm_" + _r(r, ALNUM, 36),
        "//registry.npmjs.org/:_authToken={v}",
        "NPM_TOKEN={v}",
        "npm config set //registry.npmjs.org/:_authToken {v}",
    ),
    "pypi_token": _token("pypi_token", lambda r: "pypi-AgEIcHlwaS5vcmc" + _r(r, B64URL, 60)),
    "huggingface_token": _token("hf_token", lambda r: "hf_" + _r(r, ALNUM, 34)),
    # ------------------------------------------------ SaaS APIs
    "slack_bot_token": _token(
        "slack_bot_token",
        lambda r: f"xoxb-{r.randrange(10**10, 10**12)}-{r.randrange(10**11, 10**13)}-{_r(r, ALNUM, 24)}",
    ),
    "slack_user_token": _token(
        "slack_token",
        lambda r: (
            f"xoxp-{r.randrange(10**10, 10**12)}-{r.randrange(10**10, 10**12)}-"
            f"{r.randrange(10**11, 10**13)}-{_r(r, HEX, 32)}"
        ),
    ),
    "slack_webhook": _token(
        "slack_webhook_url",
        lambda r: (
            f"https://hooks.slack.com/services/T{_r(r, UPPER_ALNUM, 8)}/B{_r(r, UPPER_ALNUM, 10)}/{_r(r, ALNUM, 24)}"
        ),
    ),
    "stripe_secret_key": _token("stripe_secret_key", lambda r: "sk_live_" + _r(r, ALNUM, r.choice([24, 99]))),
    "stripe_restricted_key": _token("stripe_key", lambda r: "rk_live_" + _r(r, ALNUM, 24)),
    "stripe_test_key": _token("stripe_api_key", lambda r: "sk_test_" + _r(r, ALNUM, 24)),
    "stripe_webhook_secret": _token("stripe_webhook_secret", lambda r: "whsec_" + _r(r, ALNUM, 32)),
    "twilio_api_key": _token("twilio_api_key", lambda r: "SK" + _r(r, HEX, 32)),
    "twilio_auth_token": _labelled(("TWILIO_AUTH_TOKEN", "auth_token", "twilio_auth_token"), lambda r: _r(r, HEX, 32)),
    "sendgrid_api_key": _token("sendgrid_api_key", lambda r: "SG." + _r(r, B64URL, 22) + "." + _r(r, B64URL, 43)),
    "mailchimp_api_key": _token("mailchimp_key", lambda r: _r(r, HEX, 32) + "-us" + str(r.randrange(1, 21))),
    "discord_bot_token": _token("discord_token", _discord_token),
    "discord_webhook": _token(
        "discord_webhook",
        lambda r: f"https://discord.com/api/webhooks/{r.randrange(10**17, 10**18)}/{_r(r, B64URL, 68)}",
    ),
    "telegram_bot_token": _token("telegram_bot_token", lambda r: f"{r.randrange(10**8, 10**10)}:AA{_r(r, B64URL, 33)}"),
    "openai_api_key": _token(
        "openai_api_key", lambda r: "sk-proj-" + _r(r, B64URL, 48) + "T3BlbkFJ" + _r(r, B64URL, 48)
    ),
    "anthropic_api_key": _token("anthropic_api_key", lambda r: "sk-ant-api03-" + _r(r, B64URL, 93) + "AA"),
    "shopify_token": _token("shopify_token", lambda r: rng_prefix(r, ["shpat_", "shpss_"]) + _r(r, HEX, 32)),
    "square_token": _token("square_token", lambda r: rng_prefix(r, ["sq0atp-", "sq0csp-"]) + _r(r, B64URL, 22)),
    "vault_token": _token("vault_token", lambda r: "hvs." + _r(r, ALNUM, 24)),
    "datadog_api_key": _labelled(("DD_API_KEY", "datadog_api_key"), lambda r: _r(r, HEX, 32)),
    "jwt": _token("access_token", _jwt),
    "bearer_token": _simple(
        lambda r: _mixed(r, ALNUM + "-._~", 40),
        "Authorization: Bearer {v}",
        "> Authorization: Bearer {v}",
        "requests.get(url, headers={'Authorization': 'Bearer {v}'})",
        '-H "Authorization: Bearer {v}"',
    ),
    "basic_auth_header": _basic_header,
    "api_key_hex64": _api_key_hex,
    # ------------------------------------------------ keys and key files
    "rsa_private_key": _pem_maker("RSA PRIVATE KEY", 600),
    "openssh_private_key": _pem_maker("OPENSSH PRIVATE KEY", 400),
    "ec_private_key": _pem_maker("EC PRIVATE KEY", 110),
    "pkcs8_private_key": _pem_maker("PRIVATE KEY", 600),
    "pgp_private_key": _pem_maker("PGP PRIVATE KEY BLOCK", 500),
    "putty_private_key": _putty,
    "age_secret_key": _age,
    "kubeconfig_client_key": _kube_key,
    # ------------------------------------------------ passwords and credentials in config
    "password_yaml": _labelled(("password", "db_password", "smtp_password"), _password),
    "password_env": _simple(
        lambda r: _password(r, "!@#%^*()-_+[]{}<>?~.,:"),
        "DB_PASSWORD={v}",
        "POSTGRES_PASSWORD={v}",
        "export MYSQL_ROOT_PASSWORD='{v}'",
        "+REDIS_PASSWORD={v}",
    ),
    "password_json": _simple(
        _password, '{"username": "app", "password": "{v}"}', '"password": "{v}",', "login(user='app', password='{v}')"
    ),
    "password_with_symbols": _simple(
        lambda r: _password(r, "&#!$%"),
        "password={v}",
        "passwd: {v}",
        "PGPASSWORD={v} psql -h db app",
        "--password={v}",
    ),
    "secret_key_base": _secret_key_base,
    "django_secret_key": _django,
    "client_secret_generic": _labelled(
        ("client_secret", "signing_secret", "webhook_secret"), lambda r: _mixed(r, ALNUM, 32)
    ),
    "encryption_key": _labelled(("encryption_key", "ENCRYPTION_KEY", "master_key"), lambda r: _b64(_bytes(r, 32))),
    "connection_string": _connection,
    "postgres_url": _url_cred("postgresql"),
    "mysql_url": _url_cred("mysql"),
    "mongodb_url": _url_cred("mongodb+srv"),
    "redis_url": _url_cred("redis"),
    "amqp_url": _url_cred("amqp"),
    "jdbc_password": _jdbc,
    "mysql_cli_password": _mysql_cli,
    "sshpass_password": _sshpass,
    "curl_user_password": _curl_u,
    "netrc_password": _netrc,
    "pgpass_password": _pgpass,
    "docker_config_auth": _docker_auth,
    # ------------------------------------------------ personal data
    "email": _simple(
        _email,
        "contact {v} for access",
        "From: Jane <{v}>",
        '"email": "{v}"',
        "git commit --author='J <{v}>'",
        "user {v} not found",
    ),
    "credit_card": _simple(
        _card,
        "card {v} declined",
        '"card_number": "{v}"',
        "charge(card='{v}', amount=1200)",
        "Payment failed for {v}: insufficient funds",
    ),
    "iban": _simple(_iban, "IBAN: {v}", '"iban": "{v}"', "refund to {v} by Friday", "iban={v}"),
    "us_ssn": _simple(_ssn, "SSN {v}", '"ssn": "{v}"', "ssn: {v}", "social security number {v} on file"),
    "br_cpf": _simple(_cpf, "CPF {v}", '"cpf": "{v}"', "cliente {v} sem cadastro"),
    "es_dni": _simple(_dni, "DNI {v}", '"dni": "{v}"', "documento {v}"),
    "ca_sin": _simple(_sin, "SIN {v}", '"sin": "{v}"', "social insurance number {v}"),
    "nl_bsn": _simple(_bsn, "BSN {v}", '"bsn": "{v}"', "burgerservicenummer: {v}"),
    "uk_nino": _simple(_nino, "NI number {v}", '"nino": "{v}"', "National Insurance {v}"),
    "phone_us": _simple(_phone, "call me at {v}", '"phone": "{v}"', "Tel: {v}", "customer phone {v} unreachable"),
    "phone_intl": _simple(_phone_intl, "call me at {v}", '"phone": "{v}"', "Tel: {v}", "mobile {v}"),
    "ipv4_public": _simple(
        _ipv4, "Connection refused from {v}", "client_ip={v}", '"remote_addr": "{v}"', "ssh deploy@{v}"
    ),
    "ipv6_public": _simple(_ipv6, "Connection from {v} port 22", 'listen "[{v}]:443"', "peer={v}"),
}


def rng_prefix(rng: random.Random, prefixes: list[str]) -> str:
    return rng.choice(prefixes)


# ------------------------------------------------------------------ look-alikes that must survive


def _lookalikes(rng: random.Random) -> tuple[str, str]:
    """(the string that must survive, a snippet that holds it)."""
    kind = rng.randrange(29)
    major, minor = rng.randrange(0, 30), rng.randrange(0, 40)
    if kind == 0:
        v = f"{major}.{minor}.{rng.randrange(0, 50)}.{rng.randrange(0, 9999)}"
        return v, rng.choice([f"version {v} of the parser", f"__version__ = '{v}'", f"Assembly Version={v}"])
    if kind == 1:
        v = _r(rng, HEX, 40)
        return v, rng.choice([f"commit {v}", f'"sha": "{v}"', f"git checkout {v}", f"rev: '{v}'"])
    if kind == 2:
        v = _r(rng, HEX, 64)
        return v, rng.choice([f"sha256:{v}", f'"digest": "sha256:{v}"', f"{v}  dist/app.tar.gz"])
    if kind == 3:
        v = "-".join(_r(rng, HEX, n) for n in (8, 4, 4, 4, 12))
        return v, rng.choice([f'request_id = "{v}"', f"trace {v} failed", f'"id": "{v}"'])
    if kind == 4:
        v = _r(rng, HEX, 32)
        return v, rng.choice([f'"etag": "{v}"', f"md5 {v}", f"cache key {v}"])
    if kind == 5:
        v = str(rng.randrange(10**9, 10**10))
        return v, rng.choice([f"order {v} shipped", f'"order_id": {v}', f"user_id={v}"])
    if kind == 6:
        digits = _luhn_complete("4" + _r(rng, "0123456789", 14))
        v = digits[:-1] + str((int(digits[-1]) + 1) % 10)  # Luhn fails
        return v, rng.choice([f"tracking {v}", f'"ref": "{v}"'])
    if kind == 7:
        v = (
            f"{rng.randrange(2000, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
            f"T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
        )
        return v, f"started at {v}"
    if kind == 8:
        v = str(rng.randrange(1_600_000_000, 1_800_000_000))
        return v, rng.choice([f'"ts": {v}', f"expires={v}"])
    if kind == 9:
        name = rng.choice(["password", "api_key", "token", "secret", "client_secret"])
        v = rng.choice(
            [
                f"{name} = os.environ['{name.upper()}']",
                f"{name} = get_{name}()",
                f"{name}: ${{{name.upper()}}}",
                f"{name}={{{{ .Values.{name} }}}}",
            ]
        )
        return v, v
    if kind == 10:
        v = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + _r(rng, B64, 43)
        return v, f"{v} deploy@ci"
    if kind == 11:
        v = f"127.0.0.1:{rng.randrange(1024, 65535)}"
        return v, f"listening on {v}"
    if kind == 12:
        v = f"{major}.{minor}.{rng.randrange(100)}"
        return v, rng.choice([f"torch=={v}", f"image: nginx:{v}", f"v{v}"])
    if kind == 13:
        v = "0x" + _r(rng, HEX, 12)
        return v, f"segfault at {v}"
    if kind == 14:
        v = f"arn:aws:iam::{rng.randrange(10**11, 10**12)}:role/deploy"
        return v, f"assumed {v}"
    if kind == 15:
        v = "#" + _r(rng, HEX, 6)
        return v, f"color: {v};"
    if kind == 16:
        v = f"1.3.6.1.4.1.{rng.randrange(1, 60000)}.{rng.randrange(1, 99)}"
        return v, f"OID {v}"
    if kind == 17:
        verb, noun = rng.choice(["get", "set", "refresh"]), rng.choice(["token", "password", "secret"])
        v = f"{verb}_{noun}_{rng.choice(['count', 'ttl', 'hash'])}"
        return v, f"n = {v}(ctx)"
    if kind == 18:
        v = f"{rng.randrange(10, 99)}:{rng.randrange(10, 59)}:{rng.randrange(10, 59)}"
        return v, f"elapsed {v}"
    if kind == 19:
        v = f"10.0.{rng.randrange(10000, 22000)}.{rng.randrange(100, 9999)}"
        return v, f"Windows build {v}"
    if kind == 20:
        v = "sha512-" + _b64(_bytes(rng, 64))
        return v, f'"integrity": "{v}"'
    if kind == 21:
        v = f"git@github.com:acme/{rng.choice(_WORDS)}.git"
        return v, f"git clone {v}"
    if kind == 22:
        v = f"https://example.com/{rng.choice(_WORDS)}/{rng.randrange(1000)}?page={rng.randrange(9)}"
        return v, f"GET {v} 200"
    if kind == 23:
        v = f"{rng.choice(_WORDS)}_{rng.choice(['key', 'token', 'password'])}"
        return v, f"def test_{v}(): assert {v} is None"
    if kind == 24:
        v = f"{rng.randrange(10**5, 10**6)}"
        return v, f"max_tokens={v}"
    if kind == 25:
        v = "BEGIN PUBLIC KEY"
        return (
            v,
            f"{DASH5}{v}{DASH5}\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE{_r(rng, B64, 40)}\n{DASH5}END PUBLIC KEY{DASH5}",
        )
    if kind == 26:
        v = f"{rng.randrange(100, 999)}-{rng.randrange(100, 999)}"
        return v, f"ticket ABC-{v}"
    if kind == 27:  # code that handles credentials without holding one
        name = rng.choice(["token", "password", "api_key", "secret", "auth", "client_secret", "access_token"])
        word = rng.choice(_WORDS)
        v = rng.choice(_CODE_LINES).format(name=name, NAME=name.upper(), word=word, WORD=word.upper())
        return v, v
    v = f"k8s-{rng.choice(_WORDS)}-{_r(rng, LOWER_ALNUM, 5)}"
    return v, f"pod/{v} restarted"


_CODE_LINES = (
    "{name} = _make_{word}({name}_source, user)",
    "{name}: ${{{{ secrets.{NAME} }}}}",
    'export {NAME}="$(cat /run/secrets/{word})"',
    "{NAME}=${NAME}_{WORD} ./run.sh",
    "{name} = HTTPBasicAuth(user, pw)",
    '{name} = response.json()["{name}"]',
    '{name}: str = Field(default="", description="the {word} {name}")',
    "{name} = secrets.token_hex(32)",
    'self.{name} = {name} or os.environ["{NAME}"]',
    'if not {name}: raise ValueError("{name} required")',
    "{name}={name},",
    '{name}=kwargs.get("{name}"),',
    '{name} = config["{word}"]["{name}"]',
    'return {{"{name}": {name}, "expires": exp}}',
    '{name}: "{{{{ vault_{word}_{name} }}}}"',
    "login(user, {name}=make_{word}(16))",
    '{{"{name}": make_{word}(user)}}',
    "{name}: Optional[str] = None",
)


# ------------------------------------------------------------------ frames: where a snippet sits in a trace


def _frame(rng: random.Random, snippet: str) -> str:
    which = rng.randrange(8)
    if which == 0:  # a stack trace
        line = rng.randrange(9, 300)
        head = f'Traceback (most recent call last):\n  File "app/settings.py", line {line}, in load\n'
        return f"{head}    {snippet}\nValueError: bad config\n"
    if which == 1:  # a diff
        lines = snippet.split("\n")
        return (
            "--- a/config/app.env\n+++ b/config/app.env\n@@ -1,3 +1,4 @@\n "
            + "\n".join("+" + ln for ln in lines)
            + "\n LOG_LEVEL=info\n"
        )
    if which == 2:  # shell history
        return f"$ cd /srv/app\n{snippet}\n$ systemctl restart app\n"
    if which == 3:  # a log line
        return f"2025-03-0{rng.randrange(1, 9)}T10:01:02Z INFO worker pid={rng.randrange(1000, 9999)} {snippet}\n"
    if which == 4:  # a YAML document
        return "service:\n  name: billing\n  replicas: 3\n" + snippet + "\n"
    if which == 5:  # prose
        return f"The deploy failed this morning; here is what I had: {snippet} — can you fix the config?"
    if which == 6:  # a code block
        return f"```\n{snippet}\n```\nThis runs in the worker."
    return snippet


def generate(seed: int, *, per_kind: int = 30, lookalikes: int = 1200) -> list[Sample]:
    """The corpus: ``per_kind`` values of every kind (each in its own sample), then ``lookalikes`` samples that
    carry no secret. Fields rotate so every record field carries every kind."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    i = 0
    for kind, make in KINDS.items():
        for _ in range(per_kind):
            value, snippet = make(rng)
            snippet = snippet.replace("{id}", _r(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16))
            extra: tuple[str, ...] = ()
            if rng.random() < 0.3:  # a look-alike next to the secret: both must be handled right
                keep, around = _lookalikes(rng)
                snippet = f"{around}\n{snippet}"
                extra = (keep,)
            samples.append(Sample(_frame(rng, snippet), FIELDS[i % len(FIELDS)], (Planted(kind, value),), extra))
            i += 1
    for _ in range(lookalikes):
        keep, around = _lookalikes(rng)
        samples.append(Sample(_frame(rng, around), FIELDS[i % len(FIELDS)], (), (keep,)))
        i += 1
    rng.shuffle(samples)
    return samples


_PLACEHOLDER = re.compile(r"<REDACTED:[A-Za-z0-9_]+>")


def _probes(value: str) -> set[str]:
    """Pieces of a value whose presence in the output means part of it leaked: overlapping 6-character windows
    (any leak of 8+ characters) and the first and last 2 characters (a tail such as ``&3`` left behind)."""
    if len(value) <= 6:
        return {value}
    out = {value[i : i + 6] for i in range(0, len(value) - 5, 3)} | {value[-6:], value[:2], value[-2:]}
    return out


def leaked(text: str, output: str, value: str) -> bool:
    """True when some piece of ``value`` (planted in ``text``) is in ``output`` and was not already in ``text``
    outside the value (placeholders count as separators, so they never create a match)."""
    baseline = text.replace(value, "\x00")
    cleaned = _PLACEHOLDER.sub("\x00", output)
    return any(p in cleaned and p not in baseline for p in _probes(value))


def record_dicts(samples: list[Sample], *, per_record: int = 4) -> list[dict[str, object]]:
    """Execution-record dicts (schema version 1) that carry the samples in their fields: each record takes up to
    ``per_record`` samples, each in the sample's field (several samples for one field are joined)."""
    out: list[dict[str, object]] = []
    for n in range(0, len(samples), per_record):
        chunk = samples[n : n + per_record]
        fields: dict[str, list[str]] = {}
        for s in chunk:
            fields.setdefault(s.field, []).append(s.text)
        text = {k: "\n".join(v) for k, v in fields.items()}
        out.append(
            {
                "record_id": f"corpus-{n // per_record:06d}",
                "timestamp": "2025-03-01T10:00:00Z",
                "session_id": f"sess-{n % 97}",
                "domain": "ops",
                "task": text.get("task") or f"Fix the failing deploy number {n}",
                "code_context": text.get("code_context", ""),
                "error_context": text.get("error_context", ""),
                "prompt": text.get("prompt") or f"Why does deploy {n} fail?",
                "output": text.get("output") or f"Deploy {n}: the config file has a typo.",
                "applied_changes": text.get("applied_changes", ""),
                "tests": text.get("tests", ""),
                "success": True,
                "feedback": {"rating": 4, "comment": text["comment"]} if "comment" in text else None,
            }
        )
    return out
