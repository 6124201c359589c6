"""The front-ends whose Dockerfiles ship under images/, with what the launcher
must know to run them. A policy names one by `frontend.recipe`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmbeddingsEnv:
    """The variables a UI reads its embedding server from: where, with which
    key, and the model's name."""

    url: str
    key: str
    model: str


@dataclass(frozen=True)
class FrontendRecipe:
    port: int
    backend_url_env: str
    backend_key_env: str
    data: str | None
    user: int
    health_path: str
    memory: str
    cpus: float
    # Set by the launcher on every start and not overridable by a policy: the
    # switches that keep the UI from trying to reach anything but the backend.
    locked_env: dict = field(default_factory=dict)
    # Set by the launcher unless the policy's env names them: settings that
    # suit the small models a sandbox runs on a CPU, not safety switches.
    default_env: dict = field(default_factory=dict)
    # The variable the UI signs its sessions with, given a key made per sandbox.
    session_key_env: str | None = None
    # A UI that turns documents into vectors: pointed at the backend's
    # embedding server, or, where the policy has no embedding model, at the
    # backend still (its documents then fail inside the sandbox, with a
    # warning from `validate`), never at the UI's default, a cloud. Locked
    # like locked_env.
    embeddings_env: EmbeddingsEnv | None = None
    # The Content-Security-Policy the ingress sends with the UI's pages, as
    # (directive, sources) pairs; "@ORIGIN_WS@" stands for the sandbox's own
    # ws:// addresses (content_security_policy). Each recipe's is the
    # tightest its UI was seen to work under (docs/security.md, "The page's
    # scripts"); a UI the user brings gets GENERIC_CSP.
    csp: tuple[tuple[str, str], ...] = ()
    # Who the owner is to a UI that takes its user from headers the ingress
    # sets on every request (X-Sandbox-User, X-Sandbox-Role, in place of any
    # the client sent): an address-like name and a role. None: neither is sent.
    signed_in_as: tuple[str, str] | None = None

    @property
    def locked_names(self) -> frozenset[str]:
        """The variables the launcher sets for this UI that a policy may not."""
        embeddings = self.embeddings_env
        return frozenset(self.locked_env) | (
            {embeddings.url, embeddings.key, embeddings.model} if embeddings else set())


# A UI the user brings: kept to its own origin, but with inline and eval'd
# scripts, data: and blob:, which such UIs are built on (we cannot know which
# it needs). An answer it renders as HTML can run there: docs/threats.md.
GENERIC_CSP = (
    ("default-src", "'self'"),
    ("script-src", "'self' 'unsafe-inline' 'unsafe-eval' blob:"),
    ("style-src", "'self' 'unsafe-inline'"),
    ("img-src", "'self' data: blob:"),
    ("font-src", "'self' data:"),
    ("media-src", "'self' data: blob:"),
    ("connect-src", "'self' data: blob: @ORIGIN_WS@"),
    ("worker-src", "'self' blob:"),
    ("child-src", "'self' blob: data:"),
    ("frame-src", "'self' blob: data:"),
    ("object-src", "'none'"),
    ("base-uri", "'self'"),
    ("form-action", "'self'"),
    ("frame-ancestors", "'self'"),
)

# Open WebUI 0.12.4's index.html has three inline scripts (a helper, the
# theme set before first paint, SvelteKit's bootstrap): allowed by their
# sha256 alone, so that no other inline script or handler runs. The hashes
# are of that version's page; a new version's page must be hashed again
# (tests/integration/test_csp.py fails on the violation).
OPEN_WEBUI_SCRIPT_HASHES = (
    "'sha256-IwbGmoRaOLT2V3cavVXQBCapN9X3Jy2mX1vd0rYDIHI='",  # resizeIframe()
    "'sha256-It9GaEgTLvfKtN2mqG9Md+/YfVSXfsb6ydMhyK60VcE='",  # the theme and splash, before first paint
    "'sha256-uEmebYzd4RnkHQrSHRLK3VqQ8E2A6msE0daQYAl79s4='",  # SvelteKit's start
)

FRONTEND_RECIPES: dict[str, FrontendRecipe] = {
    "chat": FrontendRecipe(
        port=8080, backend_url_env="OPENAI_API_BASE_URL", backend_key_env="OPENAI_API_KEY",
        data="/data", user=65534, health_path="/health", memory="256m", cpus=1.0,
        # One page, its script and its style, all files of its own
        # (images/chat): no inline script or style, no eval, no frames, no
        # images but its own; it calls only its own /api/.
        csp=(
            ("default-src", "'none'"),
            ("script-src", "'self'"),
            ("style-src", "'self'"),
            ("img-src", "'self'"),
            ("connect-src", "'self'"),
            ("base-uri", "'none'"),
            ("form-action", "'none'"),
            ("frame-ancestors", "'none'"),
        ),
    ),
    "open-webui": FrontendRecipe(
        port=8080, backend_url_env="OPENAI_API_BASE_URL", backend_key_env="OPENAI_API_KEY",
        data="/data", user=1000, health_path="/health", memory="2g", cpus=2.0,
        locked_env={
            "OFFLINE_MODE": "true",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "ENABLE_VERSION_UPDATE_CHECK": "false",
            "ENABLE_OLLAMA_API": "false",
            # Set explicitly: left empty it probes Ollama's default address anyway.
            "OLLAMA_BASE_URL": "http://127.0.0.1:11434",
            "ENABLE_OPENAI_API": "true",
            "ENABLE_COMMUNITY_SHARING": "false",
            "ENABLE_PIP_INSTALL_FRONTMATTER_REQUIREMENTS": "false",
            # Otherwise settings stored on first start override this environment later.
            "ENABLE_PERSISTENT_CONFIG": "False",
            # Its documents' embeddings come from an OpenAI-style server:
            # the backend's (embeddings_env), never the cloud its URL defaults to.
            "RAG_EMBEDDING_ENGINE": "openai",
            # The vectors stay in its data volume (Chroma, on disk): its slim
            # mode takes only a remote database (pgvector) and fails every
            # document, so it is off; the image has no torch for what slim
            # would otherwise skip, and embeddings come from the backend.
            "VECTOR_DB": "chroma",
            "USE_SLIM_DOCKER": "false",
            "DATA_DIR": "/data",
            "STATIC_DIR": "/tmp/open-webui-static",
            # Each feature below would reach past the sandbox by default or
            # once an admin fills in a URL: off, so that its switch in the UI
            # reads off and nothing tries (the network would stop it anyway).
            # Web search and its fetch_url tool ask a search engine and load
            # the pages found; the permissions hide the search toggle and
            # "attach a web page" (the server fetches that URL) from users.
            "ENABLE_WEB_SEARCH": "false",
            "USER_PERMISSIONS_FEATURES_WEB_SEARCH": "false",
            "USER_PERMISSIONS_CHAT_WEB_UPLOAD": "false",
            # Image generation and editing go to OpenAI's images API by
            # default (or ComfyUI, AUTOMATIC1111, Gemini at an address given).
            "ENABLE_IMAGE_GENERATION": "false",
            "ENABLE_IMAGE_EDIT": "false",
            "USER_PERMISSIONS_FEATURES_IMAGE_GENERATION": "false",
            # Code execution and the code interpreter are on by default: Pyodide
            # in the browser, which loads the packages it does not carry from a
            # CDN, or a Jupyter server at an address given.
            "ENABLE_CODE_EXECUTION": "false",
            "ENABLE_CODE_INTERPRETER": "false",
            "USER_PERMISSIONS_FEATURES_CODE_INTERPRETER": "false",
            # Speech to text: its default engine ("") is a local Whisper whose
            # model ("base") is downloaded from a model hub on first use; with
            # no model named there is nothing to download, and dictation or an
            # audio upload fails inside the sandbox. The other engines are
            # clouds (OpenAI, Deepgram, Azure, Mistral).
            "AUDIO_STT_ENGINE": "",
            "WHISPER_MODEL": "",
            "WHISPER_MODEL_AUTO_UPDATE": "false",
            # Text to speech: "" leaves it to the browser's own voices and the
            # server speaks nothing ("transformers" would fetch a model from a
            # hub; the rest are clouds); realtime voice calls go to OpenAI.
            "AUDIO_TTS_ENGINE": "",
            "AUDIO_REALTIME_ENABLED": "false",
            "USER_PERMISSIONS_CHAT_STT": "false",
            "USER_PERMISSIONS_CHAT_TTS": "false",
            "USER_PERMISSIONS_CHAT_CALL": "false",
            # Direct connections: each user's browser calls model APIs of their
            # own choosing; direct integrations, their own tool servers.
            "ENABLE_DIRECT_CONNECTIONS": "false",
            "ENABLE_DIRECT_INTEGRATIONS": "false",
            "USER_PERMISSIONS_FEATURES_DIRECT_TOOL_SERVERS": "false",
            # Tool servers (OpenAPI and MCP) and terminal servers are remote
            # services the UI calls with the chat's content.
            "ENABLE_TOOL_SERVERS": "false",
            "TOOL_SERVER_CONNECTIONS": "[]",
            "TERMINAL_SERVER_CONNECTIONS": "[]",
            # Google Drive and OneDrive pickers load Google's and Microsoft's
            # scripts and send their tokens there.
            "ENABLE_GOOGLE_DRIVE_INTEGRATION": "false",
            "ENABLE_ONEDRIVE_INTEGRATION": "false",
            # Webhooks post sign-ups (WEBHOOK_URL) and users' chat events
            # (their own webhooks) to Slack, Discord, Teams or any URL.
            "WEBHOOK_URL": "",
            "ENABLE_USER_WEBHOOKS": "false",
            "USER_PERMISSIONS_FEATURES_USER_WEBHOOKS": "false",
            # Sign-in through an outside provider (OAuth: Google, Microsoft,
            # GitHub, OIDC, Feishu) or a directory (LDAP) on another machine.
            "ENABLE_OAUTH": "false",
            "ENABLE_OAUTH_SIGNUP": "false",
            "ENABLE_LDAP": "false",
            # Uploaded files stay in the data volume, not in S3, GCS or Azure.
            "STORAGE_PROVIDER": "local",
            # OpenTelemetry would export traces, metrics and logs to a collector.
            "ENABLE_OTEL": "false",
            # The owner is signed in by the ingress's headers (signed_in_as),
            # as a user, not an admin: Open WebUI makes its first account an
            # admin, and shows an admin every control whatever the switches
            # above say (Attach Webpage, dictation), and its settings pages,
            # which can switch a feature back on. The role header makes that
            # account a user at each sign-in; a client's own headers never
            # reach the UI.
            "WEBUI_AUTH_TRUSTED_EMAIL_HEADER": "X-Sandbox-User",
            "WEBUI_AUTH_TRUSTED_ROLE_HEADER": "X-Sandbox-Role",
            # A user sees the models only where access to each is granted,
            # which only an admin can grant: every model of the policy is theirs.
            "BYPASS_MODEL_ACCESS_CONTROL": "true",
        },
        default_env={
            # With a document attached, Open WebUI first asks the chat model
            # to write search queries and searches with those: a whole chat
            # call before the answer's first token, and the quick-start
            # model's queries came back empty, so nothing was retrieved
            # ("all queries were None or empty" in its log). Off, the
            # user's message itself is the query. A policy with a model that
            # writes good queries may turn it back on.
            "ENABLE_RETRIEVAL_QUERY_GENERATION": "false",
            # "Attach Webpage" has the server fetch a URL, which cannot work
            # here; USER_PERMISSIONS_CHAT_WEB_UPLOAD (locked) only greys it
            # out for users, this takes it out of their + menu (Open WebUI
            # 0.12.4 shows every control to an admin whatever this says, and
            # the owner is a user: signed_in_as). A default, not a lock: a
            # policy may hide other controls with it.
            "UI_VISIBILITY": '{"chat.attach_webpage": false}',
        },
        session_key_env="WEBUI_SECRET_KEY",
        # admin@localhost: the account Open WebUI makes for the one user when
        # WEBUI_AUTH is off, so that a sandbox started before keeps its chats.
        signed_in_as=("admin@localhost", "user"),
        csp=(
            ("default-src", "'self'"),
            # No 'unsafe-inline', no 'unsafe-eval': its page, a chat and a
            # stored chat run without them (tests/integration/test_csp.py).
            # Pyodide's wasm ('wasm-unsafe-eval') is the code interpreter's,
            # which the recipe turns off.
            ("script-src", "'self' " + " ".join(OPEN_WEBUI_SCRIPT_HASHES)),
            # Svelte writes style elements and attributes as it runs: under
            # 'self' alone Chromium refused 13 of them (docs/security.md).
            # Styles run no script; what they could fetch stays in this origin.
            ("style-src", "'self' 'unsafe-inline'"),
            # Pasted and uploaded images, avatars and audio are shown from
            # data: and blob: URLs the page makes itself.
            ("img-src", "'self' data: blob:"),
            ("font-src", "'self' data:"),
            ("media-src", "'self' data: blob:"),
            # Its socket.io connection (older browsers match ws: to 'self' by name only).
            ("connect-src", "'self' @ORIGIN_WS@"),
            ("worker-src", "'self' blob:"),
            # Previews (code, artifacts) are frames it makes itself; a blob:
            # or srcdoc frame inherits this policy.
            ("frame-src", "'self' blob:"),
            ("object-src", "'none'"),
            ("base-uri", "'none'"),
            ("form-action", "'self'"),
            ("frame-ancestors", "'none'"),
        ),
        embeddings_env=EmbeddingsEnv(url="RAG_OPENAI_API_BASE_URL", key="RAG_OPENAI_API_KEY",
                                     model="RAG_EMBEDDING_MODEL"),
    ),
}

# Defaults for a front-end the user brings (frontend.build or frontend.image).
CUSTOM_FRONTEND = FrontendRecipe(
    port=8080, backend_url_env="OPENAI_API_BASE_URL", backend_key_env="OPENAI_API_KEY",
    data=None, user=65534, health_path="/", memory="1g", cpus=1.0, csp=GENERIC_CSP,
)

# A sandbox with no UI (`frontend: none`): its page routes answer in text.
API_ONLY_CSP = (("default-src", "'none'"), ("frame-ancestors", "'none'"))


def content_security_policy(recipe: FrontendRecipe | None, port: int) -> str:
    """The header's value for a UI served at 127.0.0.1:`port` (None: no UI)."""
    directives = recipe.csp if recipe else API_ONLY_CSP
    own_ws = f"ws://127.0.0.1:{port} ws://localhost:{port}"
    return "; ".join(f"{name} {sources.replace('@ORIGIN_WS@', own_ws)}" for name, sources in directives)
