"""Built-in defaults: the secret list, the mandatory write-denies, the default policy.

These lists are part of the product's promise and are documented in
``docs/policy.md``; a test keeps the two in step.  Changing them changes what
every user's sandbox can see, so each entry says why it is here.
"""

from __future__ import annotations

# Host secrets that only a root caller could read (the kernel's permissions
# keep them from anyone else's sandbox); part of the secret list below.
ROOT_CALLER_SECRETS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/ssh",
    "/root/.aws",
    "/root/.ssh",
    "/root/.gnupg",
)

# Paths hidden from every sandbox (read *and* write), on top of the user's own
# ``filesystem.deny_read``.  ``~`` is the invoking user's home; ``{uid}`` the uid.
# A user may take an entry out only by naming it exactly in
# ``filesystem.reveal`` in their own policy file.
BUILTIN_SECRETS: tuple[str, ...] = (
    # Cloud provider credentials.
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.oci",
    "~/.config/doctl",
    "~/.databrickscfg",
    "~/.s3cfg",
    "~/.boto",
    "~/.config/rclone",
    # Remote access and signing keys.
    "~/.ssh",
    "~/.gnupg",
    "~/.password-store",
    # Cluster and container credentials.
    "~/.kube",
    "~/.docker/config.json",
    "~/.config/containers/auth.json",
    "~/.terraform.d/credentials.tfrc.json",
    "~/.vault-token",
    # Source hosting and package registry tokens.
    "~/.netrc",
    "~/.git-credentials",
    "~/.config/git/credentials",
    "~/.config/gh",
    "~/.config/hub",
    "~/.config/glab-cli",
    "~/.npmrc",
    "~/.yarnrc.yml",
    "~/.pypirc",
    "~/.config/pip/pip.conf",
    "~/.cargo/credentials",
    "~/.cargo/credentials.toml",
    "~/.gem/credentials",
    "~/.m2/settings.xml",
    "~/.gradle/gradle.properties",
    "~/.config/configstore",
    # Database client passwords.
    "~/.pgpass",
    "~/.my.cnf",
    # Keyrings and password managers.
    "~/.local/share/keyrings",
    "~/.config/op",
    "~/.config/Bitwarden",
    "~/.config/Bitwarden CLI",
    # Browser profiles: cookies and saved passwords.
    "~/.mozilla",
    "~/.config/google-chrome",
    "~/.config/chromium",
    "~/.config/BraveSoftware",
    "~/.config/microsoft-edge",
    "~/.config/vivaldi",
    "~/snap/firefox",
    "~/.thunderbird",
    # AI agent credentials.
    "~/.claude/.credentials.json",
    "~/.codex/auth.json",
    "~/.config/anthropic",
    "~/.config/openai",
    # Shell histories often hold pasted tokens.
    "~/.bash_history",
    "~/.zsh_history",
    "~/.python_history",
    "~/.psql_history",
    "~/.mysql_history",
    "~/.node_repl_history",
    "~/.local/share/fish/fish_history",
    # The user's runtime directory holds the ssh-agent, gpg-agent, D-Bus and
    # keyring sockets.
    "/run/user/{uid}",
    # Host secrets readable when blastwall itself runs as root.
    *ROOT_CALLER_SECRETS,
)

# Paths made read-only inside every writable root (the workspace and any
# ``allow_write`` path), existing or not.  Each one is executed or trusted by a
# tool on the *host* later, so writing it would hand the agent code execution
# outside the sandbox.  A missing entry is blocked at its first missing
# component with a temporary placeholder (always an empty directory, which git
# ignores, so an agent's `git add -A` cannot commit it) removed after the run.
MANDATORY_WRITE_DENY: tuple[str, ...] = (
    # Shell start-up files.
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".zlogout",
    ".kshrc",
    ".cshrc",
    ".tcshrc",
    ".config/fish",
    # direnv runs .envrc on `cd`.
    ".envrc",
    # The git directory, whole: the host's git runs its hooks, obeys its config
    # (core.fsmonitor, core.hooksPath, aliases, filters) and its other control
    # files (a `commondir` moves config and hooks elsewhere), and writes files
    # in it through symbolic links planted there (COMMIT_EDITMSG, the logs).
    # What is safe to write in it cannot be named file by file, so none of it
    # is writable unless the user says `filesystem.allow_git_writes`.
    ".git",
    # git reads a .gitconfig wherever HOME points (sandboxes and CI often point
    # it at the project), and .gitmodules chooses the URLs and paths that
    # `git submodule update` fetches into; both are on srt's list too.
    ".gitconfig",
    ".gitmodules",
    # ripgrep reads the file RIPGREP_CONFIG_PATH names (agents point it into the
    # project): `--pre` there runs a program on every file searched.
    ".ripgreprc",
    # Editors run tasks and load per-project settings and scripts.
    ".vscode",
    ".idea",
    ".zed",
    # Dev Containers run `initializeCommand` on the host when the folder is opened.
    ".devcontainer",
    ".devcontainer.json",
    ".exrc",
    ".nvimrc",
    ".nvim.lua",
    ".vimrc",  # Read from the current directory by vim with `exrc` set, and from home always.
    ".gvimrc",
    # Agents load project settings, hooks and MCP servers from these.
    ".claude",
    ".mcp.json",
    ".cursor",
    ".codex",
    ".agents",  # Codex's skills and agent instructions.
    ".gemini",
    ".kiro",
    ".amazonq",
    ".roo",
    ".continue",
    ".aider.conf.yml",
    "opencode.json",
    ".blastwall",
)

# With ``filesystem.allow_git_writes``, ``.git`` stays writable (commits,
# branches, checkouts inside) and only these are protected: what git runs and
# what it obeys directly.  The rest of the git directory is then the agent's:
# see docs/policy.md for what that gives up.
GIT_WRITES_DENY: tuple[str, ...] = (".git/hooks", ".git/config", ".git/modules")


def mandatory_write_deny(*, git_writes: bool) -> tuple[str, ...]:
    """MANDATORY_WRITE_DENY, with ``.git`` narrowed to GIT_WRITES_DENY when git writes are allowed."""
    if not git_writes:
        return MANDATORY_WRITE_DENY
    out: list[str] = []
    for entry in MANDATORY_WRITE_DENY:
        out += GIT_WRITES_DENY if entry == ".git" else (entry,)
    return tuple(out)


# More write-denies, applied where the writable root is the user's home (or
# contains it): files that git, the desktop session and the login shell read
# from the home directory only.
MANDATORY_HOME_WRITE_DENY: tuple[str, ...] = (
    ".config/git",
    ".config/autostart",
    ".config/systemd",
    ".config/environment.d",
    ".local/share/systemd",
    ".local/bin",
    ".pam_environment",
    ".xprofile",
    ".xinitrc",
    ".xsessionrc",
    # Read by the user's next shell, terminal multiplexer or editor.
    ".bash_aliases",
    ".inputrc",
    ".tmux.conf",
    ".config/tmux",
    ".vim",
    ".config/nvim",
    ".config/Code",
    ".config/direnv",
    # The user's agent configuration, where it lives outside a project.
    ".config/opencode",
    ".aider.conf.yml",
)

# Environment variables dropped from the sandbox unless passed deliberately
# with ``--env NAME`` or ``environment.pass``.  Matching is case-insensitive:
# a name is dropped when it contains one of SECRET_ENV_WORDS, ends with one of
# SECRET_ENV_SUFFIXES, starts with one of SECRET_ENV_PREFIXES, or is listed in
# SECRET_ENV_NAMES.
SECRET_ENV_WORDS: tuple[str, ...] = (
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "APIKEY",
    "API_KEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "COOKIE",
    "SESSION_KEY",
)
SECRET_ENV_SUFFIXES: tuple[str, ...] = ("_KEY", "_PASS", "_PAT", "_PWD", "_DSN", "_AUTH")
SECRET_ENV_PREFIXES: tuple[str, ...] = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "VAULT_")
SECRET_ENV_NAMES: frozenset[str] = frozenset(
    {
        "SSH_AUTH_SOCK",
        "SSH_AGENT_PID",
        "GPG_AGENT_INFO",
        "KRB5CCNAME",
        "DATABASE_URL",
        "REDIS_URL",
        "MONGODB_URI",
        "DBUS_SESSION_BUS_ADDRESS",
        "NETRC",
    }
)

# Syscall families the seccomp layer refuses in every sandbox (see
# blastwall.tiers._raw_seccomp for the calls of each).
DENIED_SYSCALL_FAMILIES: tuple[str, ...] = (
    "namespaces",
    "mount",
    "ptrace",
    "io-uring",
    "bpf",
    "perf",
    "keyring",
    "kernel-modules",
    "kexec",
    "terminal-injection",
    "handle-open",
    "userfaultfd",
    # chmod and file creation with the setuid or setgid bit: a set-id file
    # made inside would run with its owner's rights on the host.
    "set-id",
    # Character and block device nodes.
    "devices",
)

# The only address families socket(2) may create inside: the loopback the
# tools reach the gateway's relays on.  ``unix`` is added only when the policy
# names socket paths (filesystem.allow_unix_sockets).  Everything else --
# netlink (routes, audit, uevents, sock_diag), packet, vsock, bluetooth and
# whatever a future kernel adds -- is refused.
SOCKET_FAMILIES: tuple[str, ...] = ("inet", "inet6")

# The user a root caller's commands run as inside every tier: the boundary
# never hands uid 0 to the sandboxed program.  Each tier maps it onto the
# owner of the writable roots on the host.
SANDBOX_UID = 1000
SANDBOX_GID = 1000
