"""Generate tests/fixtures/scrub_corpus.jsonl: planted secrets/PII in realistic text, plus look-alike clean text.

Run from the repository root: ``python tests/subagents/data/make_scrub_corpus.py``. Deterministic (seeded), so
the committed file is reproducible. Each line is ``{"text", "secrets": [{"kind", "value"}]}``; clean lines have
``"secrets": []``. Values are random and never real credentials.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

SEED = 20250106
N_SECRET_LINES = 1300
N_CLEAN_LINES = 650
OUT = Path(__file__).resolve().parents[2] / "fixtures" / "scrub_corpus.jsonl"

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"


def rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def mixed(rng: random.Random, alphabet: str, n: int) -> str:
    """Random string guaranteed to hold an upper, a lower and a digit (as real keys practically always do)."""
    while True:
        s = rand(rng, alphabet, n)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


WORDS = [
    "user",
    "order",
    "invoice",
    "cache",
    "session",
    "token",
    "count",
    "index",
    "request",
    "buffer",
    "config",
    "retry",
    "payment",
    "report",
]
HOSTS = ["db.internal", "prod-db-01.example.net", "10.20.0.5", "redis.svc.cluster.local", "mq.example.com"]
FIRST = ["jane", "john", "maria", "wei", "olga", "ahmed", "priya", "lucas", "sara", "kenji", "ana", "tom"]
LAST = ["doe", "smith", "garcia", "chen", "ivanova", "khan", "patel", "muller", "rossi", "sato", "silva"]
DOMAINS = ["example.com", "acme.io", "corp.example.org", "mail.co.uk", "startup.dev", "gmail.com"]


# --- value generators: kind -> value ---
def v_openai(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "sk-" + mixed(rng, ALNUM, 48)
    return "sk-proj-" + mixed(rng, URLSAFE, rng.randint(60, 120))


def v_anthropic(rng: random.Random) -> str:
    return "sk-ant-api03-" + mixed(rng, URLSAFE, 93) + "AA"


def v_github(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return "github_pat_" + mixed(rng, ALNUM, 22) + "_" + mixed(rng, ALNUM, 59)
    return rng.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + mixed(rng, ALNUM, 36)


def v_slack(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return (
            "https://hooks.slack.com/services/T"
            + rand(rng, string.ascii_uppercase + string.digits, 8)
            + "/B"
            + rand(rng, string.ascii_uppercase + string.digits, 10)
            + "/"
            + mixed(rng, ALNUM, 24)
        )
    return (
        rng.choice(["xoxb-", "xoxp-", "xoxa-", "xoxs-"])
        + rand(rng, string.digits, 12)
        + "-"
        + rand(rng, string.digits, 13)
        + "-"
        + mixed(rng, ALNUM, 24)
    )


def v_stripe(rng: random.Random) -> str:
    return rng.choice(["sk_live_", "rk_live_", "sk_test_"]) + mixed(rng, ALNUM, rng.randint(24, 99))


def v_hf(rng: random.Random) -> str:
    return "hf_" + mixed(rng, ALNUM, 34)


def v_google(rng: random.Random) -> str:
    return "AIza" + mixed(rng, URLSAFE, 35)


def v_aws_access(rng: random.Random) -> str:
    return rng.choice(["AKIA", "ASIA"]) + rand(rng, string.ascii_uppercase + "234567", 16)


def v_aws_secret(rng: random.Random) -> str:
    return mixed(rng, ALNUM + "/+", 40)


def v_jwt(rng: random.Random) -> str:
    header = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": rand(rng, string.digits, 10), "iat": rng.randint(1.6e9, 1.8e9)}).encode())
    return f"{header}.{payload}.{b64url(rng.randbytes(32))}"


def v_password(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.3:
        return mixed(rng, ALNUM, rng.randint(10, 24))
    if style < 0.6:
        return (
            rng.choice(["Summer", "Winter", "Tr0ub4dor", "Passw0rd", "Dragon"])
            + rand(rng, string.digits, 3)
            + rng.choice("!#%^*-_+")
        )
    return mixed(rng, ALNUM + "!#%^*-_+~", rng.randint(12, 32))


def v_url_password(rng: random.Random) -> str:
    # Inside a URL, "#", "/", "?" and "@" must be percent-encoded (RFC 3986), so generate them that way.
    return v_password(rng).replace("#", "%23")


def v_bearer(rng: random.Random) -> str:
    return mixed(rng, ALNUM + "._-", rng.randint(24, 64))


def v_email(rng: random.Random) -> str:
    sep = rng.choice([".", "_", "", "+"])
    tail = "dev" if sep == "+" else rng.choice(LAST)
    return f"{rng.choice(FIRST)}{sep}{tail}@{rng.choice(DOMAINS)}"


def v_phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [
            f"({a}) {b}-{c:04d}",
            f"{a}-{b}-{c:04d}",
            f"{a}.{b}.{c:04d}",
            f"+1 {a} {b} {c:04d}",
            f"+1-{a}-{b}-{c:04d}",
            f"+44 20 {rng.randint(7000, 8999)} {c:04d}",
            f"+49 30 {rng.randint(1000000, 99999999)}",
            f"+33 6 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
            f"+91 {rng.randint(70000, 99999)} {rng.randint(10000, 99999)}",
            f"+1{a}{b}{c:04d}",
        ]
    )


def v_ipv4(rng: random.Random) -> str:
    first = rng.choice([10, 172, 192, 34, 52, 88, 104, 203, 8])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def v_ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    groups[0] = rng.choice(["2001", "2a02", "2600", "fe80", "fd12"])
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + groups[7]


def pem_body(rng: random.Random, escaped: bool) -> tuple[str, str]:
    lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(rng.randint(3, 8))]
    nl = "\\n" if escaped else "\n"
    return nl.join(lines), nl


# --- contexts: kind -> list of templates with {v} ---
CTX: dict[str, list[str]] = {
    "openai_api_key": [
        "OPENAI_API_KEY={v}",
        'client = OpenAI(api_key="{v}")',
        "openai.api_key = '{v}'  # TODO move to env",
        '{{"model": "gpt-4o", "api_key": "{v}"}}',
        "export OPENAI_API_KEY={v}\npython run_eval.py --n 50",
    ],
    "anthropic_api_key": [
        "ANTHROPIC_API_KEY={v}",
        'client = anthropic.Anthropic(api_key="{v}")',
        "x-api-key: {v}",
        "llm:\n  provider: anthropic\n  key: {v}",
    ],
    "github_token": [
        "git clone https://{v}@github.com/acme/{w}-service.git",
        "GITHUB_TOKEN={v}",
        'gh = Github("{v}")',
        "      env:\n        GH_TOKEN: {v}",
    ],
    "slack_token": [
        "SLACK_BOT_TOKEN={v}",
        'client = WebClient(token="{v}")',
        "requests.post('{v}', json={{'text': 'deploy done'}})",
        "slack:\n  bot_token: {v}\n  channel: '#alerts'",
    ],
    "stripe_key": ['stripe.api_key = "{v}"', "STRIPE_SECRET_KEY={v}", "const stripe = require('stripe')('{v}');"],
    "huggingface_token": [
        "HF_TOKEN={v}",
        "huggingface-cli login --token {v}",
        'model = AutoModel.from_pretrained("acme/{w}", token="{v}")',
    ],
    "google_api_key": [
        "GOOGLE_API_KEY={v}",
        "url = f'https://maps.googleapis.com/maps/api/geocode/json?address={{addr}}&key={v}'",
        'const firebaseConfig = {{ apiKey: "{v}", projectId: "acme-{w}" }};',
    ],
    "aws_access_key": [
        "aws_access_key_id = {v}",
        "AWS_ACCESS_KEY_ID={v}",
        's3 = boto3.client("s3", aws_access_key_id="{v}")',
        '"AccessKeyId": "{v}",',
    ],
    "aws_secret_key": [
        "aws_secret_access_key = {v}",
        "AWS_SECRET_ACCESS_KEY={v}",
        's3 = boto3.client("s3", aws_secret_access_key="{v}")',
        '"SecretAccessKey": "{v}",',
        "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n{v}",
        "# aws credentials for the {w} bucket\nkey={v}",
    ],
    "jwt": [
        "Authorization: Bearer {v}",
        'token = "{v}"',
        "DEBUG auth: decoded session cookie sid={v}",
        "curl -H 'Authorization: Bearer {v}' https://api.example.com/v1/{w}s",
    ],
    "url_password": [
        "DATABASE_URL=postgresql://app_user:{v}@{h}:5432/{w}s",
        'engine = create_engine("mysql+pymysql://root:{v}@{h}/shop")',
        "REDIS_URL=redis://default:{v}@{h}:6379/0",
        "amqp://guest:{v}@{h}:5672//",
        "ERROR could not connect to mongodb+srv://admin:{v}@cluster0.{w}.mongodb.net/test",
    ],
    "bearer_token": [
        "Authorization: Bearer {v}",
        'curl -H "Authorization: Bearer {v}" https://api.example.com/v2/{w}',
        'headers = {{"Authorization": "Bearer {v}"}}',
        "> GET /api/{w} HTTP/1.1\n> Authorization: bearer {v}",
    ],
    "generic_secret": [
        "DB_PASSWORD={v}",
        'password = "{v}"',
        "  password: '{v}'",
        '{{"username": "svc", "password": "{v}"}}',
        "[database]\nuser = app\npassword = {v}",
        "https://api.example.com/{w}?user=bot&token={v}&page=2",
        "API_KEY={v}",
        'config["client_secret"] = "{v}"',
        "secret: {v}",
        "--password={v}",
        "SECRET_KEY = '{v}'",
    ],
    "email": [
        "Signed-off-by: {n} <{v}>",
        "INFO password reset requested for {v}",
        'user = User(name="{n}", email="{v}")',
        "# maintainer: {v}",
        "Reported by {v} on 2024-03-02",
    ],
    "phone_number": [
        "INFO sms sent to {v}",
        'customer = {{"name": "{n}", "phone": "{v}"}}',
        "Call the on-call engineer at {v} if the job fails.",
        "# contact: {v}",
    ],
    "ipv4_address": [
        "WARN failed login for admin from {v}",
        "upstream backend {{ server {v}:8080; }}",
        'HOST = "{v}"',
        '{v} - - [12/Mar/2024:10:01:02 +0000] "GET /api/{w} HTTP/1.1" 200 512',
        "ssh deploy@{v} 'systemctl restart app'",
    ],
    "ipv6_address": [
        "client connected from {v}",
        "listen [{v}]:443 ssl;",
        'ALLOWED = ["{v}"]',
        "WARN rate limit hit for {v} on /api/{w}",
    ],
}

GEN: dict[str, Callable[[random.Random], str]] = {
    "openai_api_key": v_openai,
    "anthropic_api_key": v_anthropic,
    "github_token": v_github,
    "slack_token": v_slack,
    "stripe_key": v_stripe,
    "huggingface_token": v_hf,
    "google_api_key": v_google,
    "aws_access_key": v_aws_access,
    "aws_secret_key": v_aws_secret,
    "jwt": v_jwt,
    "url_password": v_url_password,
    "bearer_token": v_bearer,
    "generic_secret": v_password,
    "email": v_email,
    "phone_number": v_phone,
    "ipv4_address": v_ipv4,
    "ipv6_address": v_ipv6,
}

CODE_BEFORE = [
    "def load_{w}(path):\n    with open(path) as fh:\n        return json.load(fh)\n",
    "import os\nimport logging\n\nlogger = logging.getLogger(__name__)\n",
    "2024-03-12T10:01:02Z INFO starting worker pid=4312 version=2.14.3\n",
    "# settings for the {w} service\n",
    "",
    'Traceback (most recent call last):\n  File "app/{w}.py", line 42, in handle\n',
]
CODE_AFTER = [
    "\nfor item in items:\n    process(item)\n",
    "\n2024-03-12T10:01:03Z INFO ready in 0.82s\n",
    "\nreturn {w}_count\n",
    "",
    "\n# end of config\n",
]


def pem_line(rng: random.Random) -> dict[str, object]:
    kind_label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body, nl = pem_body(rng, escaped=rng.random() < 0.3)
    text = f"-----BEGIN {kind_label}-----{nl}{body}{nl}-----END {kind_label}-----"
    wrapped = rng.choice(["{t}", 'KEY = """{t}"""', "$ cat id_rsa\n{t}\n$ ssh-add id_rsa", "PRIVATE_KEY='{t}'"])
    return {"text": wrapped.format(t=text), "secrets": [{"kind": "pem_private_key", "value": body}]}


def gcp_line(rng: random.Random) -> dict[str, object]:
    body, _ = pem_body(rng, escaped=True)
    key_id = rand(rng, "0123456789abcdef", 40)
    obj = (
        '{"type": "service_account", "project_id": "acme-prod", "private_key_id": "' + key_id + '", '
        '"private_key": "-----BEGIN PRIVATE KEY-----\\n' + body + '\\n-----END PRIVATE KEY-----\\n", '
        '"client_email": "ingest@acme-prod.iam.gserviceaccount.com", "client_id": "1043"}'
    )
    return {
        "text": obj,
        "secrets": [
            {"kind": "gcp_service_account_key", "value": body},
            {"kind": "gcp_private_key_id", "value": key_id},
        ],
    }


def secret_line(rng: random.Random, kind: str) -> dict[str, object]:
    value = GEN[kind](rng)
    template = rng.choice(CTX[kind])
    name = f"{rng.choice(FIRST).title()} {rng.choice(LAST).title()}"
    body = template.format(v=value, w=rng.choice(WORDS), h=rng.choice(HOSTS[:2] + HOSTS[3:]), n=name)
    before = rng.choice(CODE_BEFORE).format(w=rng.choice(WORDS))
    after = rng.choice(CODE_AFTER).format(w=rng.choice(WORDS))
    return {"text": before + body + after, "secrets": [{"kind": kind, "value": value}]}


def clean_line(rng: random.Random) -> dict[str, object]:
    w = rng.choice(WORDS)
    sha = rand(rng, "0123456789abcdef", 40)
    digest = rand(rng, "0123456789abcdef", 64)
    uuid = "-".join(rand(rng, "0123456789abcdef", n) for n in (8, 4, 4, 4, 12))
    ver = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}"
    templates = [
        f"commit {sha}\nAuthor: CI Bot\n\n    Bump {w} to {ver}",
        "n_tokens = get_token_count(text)\nif n_tokens > max_tokens:\n    raise ValueError('too long')",
        "token = tokenizer.encode(text)\ntokens = [t for t in token if t != pad_token_id]",
        f'sha256 = "{digest}"\nassert hashlib.sha256(data).hexdigest() == sha256',
        f'request_id = "{uuid}"\nlogger.info("handled %s", request_id)',
        f"pip install transformers=={ver} peft==0.{rng.randint(1, 20)}.0",
        f"image: ghcr.io/acme/{w}@sha256:{digest}",
        "def get_password_hash(password: str) -> str:\n    return bcrypt.hashpw(password.encode(), salt)",
        "password = getpass.getpass()\nsecret = os.environ['APP_SECRET']",
        "api_key = settings.openai_api_key\nclient = OpenAI(api_key=api_key)",
        f"server.bind(('127.0.0.1', {rng.randint(1024, 65000)}))\napp.run(host='0.0.0.0')",
        f"2024-03-12T10:0{rng.randint(0, 9)}:{rng.randint(10, 59)}Z INFO processed {rng.randint(1, 9999)} "
        f"{w}s in {rng.random():.3f}s",
        f"https://github.com/acme/{w}-service/blob/{sha[:7]}/src/{w}.py#L{rng.randint(1, 400)}",
        "@app.route('/api/users/<int:user_id>')\ndef get_user(user_id):\n    return jsonify(db.get(user_id))",
        f"version = '{ver}'\nrelease = 'v{ver}-rc{rng.randint(1, 5)}'",
        f"x = values[1::2]\ny = matrix[::-1]\nstd::vector<int> v({rng.randint(1, 99)});",
        f"const refreshToken = response.data.refresh_token;\nlocalStorage.setItem('{w}', refreshToken);",
        f"if token_count >= {rng.randint(100, 9000)}:\n    truncate(tokens)",
        "# Bearer tokens are validated by the auth middleware before the handler runs.",
        f"docker run -p {rng.randint(3000, 9000)}:80 acme/{w}:{ver}",
        f"kubectl rollout status deployment/{w}-api --timeout=120s",
        f"SELECT id, name FROM {w}s WHERE created_at > '2024-01-{rng.randint(10, 28)}' LIMIT 100;",
        f"checksum: md5:{rand(rng, '0123456789abcdef', 32)}",
        f"The build {sha[:12]} passed {rng.randint(10, 900)}/{rng.randint(900, 1000)} tests in 12:30:45.",
        "refresh_token = new_refresh_token\nsession.token = self.token",
        f"export PATH=$HOME/.local/bin:$PATH\nexport {w.upper()}_TIMEOUT=30",
        f"CACHE_TTL_SECONDS = {rng.randint(60, 86400)}\nMAX_RETRIES = {rng.randint(1, 9)}",
        f"See RFC {rng.randint(1000, 9999)} section {rng.randint(1, 9)}.{rng.randint(1, 9)} for the {w} format.",
        f"base_url = 'http://localhost:{rng.randint(3000, 9000)}/api/v1'",
        f"password_min_length = {rng.randint(8, 16)}\ntoken_ttl = timedelta(hours={rng.randint(1, 48)})",
    ]
    return {"text": rng.choice(templates), "secrets": []}


def generate(seed: int = SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    kinds = sorted(GEN)
    lines: list[dict[str, object]] = []
    for i in range(N_SECRET_LINES):
        slot = i % (len(kinds) + 2)
        if slot == len(kinds):
            lines.append(pem_line(rng))
        elif slot == len(kinds) + 1:
            lines.append(gcp_line(rng))
        else:
            line = secret_line(rng, kinds[slot])
            if rng.random() < 0.15:  # a second secret in the same text
                other = secret_line(rng, rng.choice(kinds))
                line = {
                    "text": f"{line['text']}\n{other['text']}",
                    "secrets": [*line["secrets"], *other["secrets"]],  # type: ignore[misc]
                }
            lines.append(line)
    lines.extend(clean_line(rng) for _ in range(N_CLEAN_LINES))
    rng.shuffle(lines)
    return lines


def main() -> None:
    lines = generate()
    with OUT.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
    planted = sum(len(line["secrets"]) for line in lines)  # type: ignore[arg-type]
    print(f"wrote {OUT}: {len(lines)} lines, {planted} planted values")


if __name__ == "__main__":
    main()
