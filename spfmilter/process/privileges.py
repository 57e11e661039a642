"""Who the daemon runs as, and what it may touch before it drops root.

This module owns the account the daemon switches to (the [milter] user;
by default spfmilter, else nobody), the checks made while still root (a
configuration file that others could have written is refused: whoever
writes it chooses the user and the socket of the next root start), the unix
socket's directory (only a directory the daemon creates itself gets an
owner and a mode, set through a descriptor opened without following
symlinks; an existing one is never changed, only checked: the daemon must
be able to create its socket there, nobody else may replace it, and Postfix
should be able to reach it, which is said only where the daemon can tell:
not for owners outside its user namespace), and the drop itself.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from spfmilter.config.loading import ConfigError
from spfmilter.config.schema import MilterConfig

# The account the systemd sysusers file creates, tried when [milter] user
# is empty; nobody is shared with other daemons and only a fallback.
DEFAULT_USER = "spfmilter"
FALLBACK_USER = "nobody"
# The MTA account whose access to the socket is checked at start.
POSTFIX_USER = "postfix"
# What stat() reports for an owner or group outside this process's user
# namespace (the kernel's default overflowuid and overflowgid): under
# systemd's PrivateUsers=yes every id but root's and the service's.
OVERFLOW_ID = 65534


@dataclass(frozen=True)
class Account:
    """An account to run as: its ids and all its groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def named(cls, name: str) -> Account:
        """The account called `name`; raises KeyError if there is none."""
        entry = pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


def choose_account(settings: MilterConfig) -> tuple[Account | None, list[str]]:
    """The account to switch to when started as root (None: stay as we
    are), and warnings to log."""
    if os.geteuid() != 0:
        return None, []
    if settings.user == "root":
        return None, ["running as root: [milter] user = root was asked for"]
    name = settings.user or DEFAULT_USER
    try:
        return Account.named(name), []
    except KeyError:
        if settings.user:
            raise ConfigError(f"[milter] user: no such user {settings.user!r}") from None
    warning = (
        f"no account {DEFAULT_USER!r}: running as {FALLBACK_USER!r}, which other daemons "
        f"share and which could then replace the socket; create it with "
        f"'useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin "
        f"{DEFAULT_USER}' (or systemd-sysusers with systemd/spfmilter.sysusers)"
    )
    return Account.named(FALLBACK_USER), [warning]


def socket_group(settings: MilterConfig, account: Account | None) -> int:
    """The group a socket directory made by the daemon gets."""
    if settings.socket_group:
        try:
            return grp.getgrnam(settings.socket_group).gr_gid
        except KeyError:
            raise ConfigError(
                f"[milter] socket_group: no such group {settings.socket_group!r}"
            ) from None
    return account.gid if account is not None else os.getegid()


def check_config_file(path: str, account: Account | None) -> None:
    """Refuse, when started as root, a configuration file that someone
    other than root or the account could have written: the file, or a
    directory above it that lets others replace it."""
    if os.geteuid() != 0:
        return
    trusted = {0} if account is None else {0, account.uid}
    trusted_groups = {0} if account is None else {0, account.gid}
    real = Path(os.path.realpath(path))
    for place in (real, *real.parents):
        info = place.stat()
        what = f"{path}: {place}" if place != Path(path) else path
        if info.st_uid not in trusted:
            raise ConfigError(
                f"{what} belongs to {_user_name(info.st_uid)}, who could choose the user and "
                "socket of the daemon started as root; make it root's"
            )
        sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
        others = info.st_mode & stat.S_IWOTH
        group = info.st_mode & stat.S_IWGRP and info.st_gid not in trusted_groups
        if (others or group) and not sticky:
            raise ConfigError(
                f"{what} is writable by {'everyone' if others else _group_name(info.st_gid)} "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); remove that write permission"
            )


def prepare_socket(settings: MilterConfig, account: Account | None) -> list[str]:
    """Make or check a unix socket's directory and set the umask that gives
    the socket `socket_mode`; returns warnings to log.

    libmilter creates the socket itself (removing a stale one first) after
    the drop, with the process umask.  Raises ConfigError when the daemon
    could not create its socket or others could replace it.
    """
    kind, _, path = settings.socket.partition(":")
    if kind not in ("unix", "local"):
        return []
    directory = Path(path).parent
    if not os.path.lexists(directory):
        _make_directory(directory, settings, account)
    _check_directory(directory, account)
    os.umask(0o777 & ~settings.socket_mode)
    return _postfix_access(Path(path), settings, account)


def _make_directory(directory: Path, settings: MilterConfig, account: Account | None) -> None:
    # Parents are made as usual (root's, 0755); the socket's own directory is
    # then opened without following a symlink, so an owner and mode set
    # through that descriptor land on the directory just made, whatever
    # another user may have put in its place since.
    directory.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o2750 if settings.socket_mode & 0o007 == 0 else 0o2755
    directory.mkdir(mode=0o700)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.geteuid() == 0:
            uid = account.uid if account is not None else 0
            os.fchown(fd, uid, socket_group(settings, account))
        # The setgid bit makes the socket inherit the directory's group.
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _check_directory(directory: Path, account: Account | None) -> None:
    uid = account.uid if account is not None else os.geteuid()
    groups = set(account.groups) if account is not None else {os.getegid(), *os.getgroups()}
    trusted = {0, uid}
    # Every component on the way: a symlink or directory that belongs to
    # someone else could be changed to point the socket elsewhere.
    place = Path("/")
    for part in directory.parts[1:]:
        place = place / part
        info = place.lstat()
        if info.st_uid not in trusted:
            raise ConfigError(
                f"[milter] socket: {place} belongs to {_user_name(info.st_uid)}, who could "
                "replace the socket; use a directory of root's or the daemon's own"
            )
        if stat.S_ISLNK(info.st_mode):
            place = Path(os.path.realpath(place))
    info = directory.stat()
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"[milter] socket: {directory} is writable by everyone (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), who could replace the socket"
        )
    if uid != 0 and not _allowed(info, uid, groups, write=True):
        who = account.name if account is not None else _user_name(uid)
        raise ConfigError(
            f"[milter] socket: {who} cannot create the socket in {directory} (owner "
            f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)}, mode "
            f"{stat.S_IMODE(info.st_mode):04o}); choose a directory that does not exist yet "
            "(the daemon makes it) or one that user may write"
        )


def _postfix_access(sock: Path, settings: MilterConfig, account: Account | None) -> list[str]:
    """A warning when Postfix's smtpd (user postfix) will not be able to
    connect to the socket about to be made."""
    try:
        postfix = Account.named(POSTFIX_USER)
    except KeyError:
        return []
    groups = set(postfix.groups)
    for place in (sock.parent, *sock.parent.parents):
        info = place.stat()
        if _hidden(info):
            return []  # who may enter cannot be told from here: say nothing
        if not _allowed(info, postfix.uid, groups, search=True):
            return [_unreachable(sock, f"it cannot enter {place} ({_describe(info)})")]
    directory = sock.parent.stat()
    if directory.st_mode & stat.S_ISGID:
        gid = directory.st_gid
    else:
        gid = account.gid if account is not None else os.getegid()
    owner = account.uid if account is not None else os.geteuid()
    mode = settings.socket_mode
    if postfix.uid == owner:
        writable = bool(mode & 0o200)
    elif gid in groups:
        writable = bool(mode & 0o020)
    else:
        writable = bool(mode & 0o002)
    if writable:
        return []
    return [
        _unreachable(
            sock,
            f"the socket will be {_group_name(gid)} mode {mode:04o} and postfix is not in "
            f"group {_group_name(gid)}",
        )
    ]


def _hidden(info: os.stat_result) -> bool:
    """Whether the owner or group of `info` is outside this process's user
    namespace, so that stat() shows the overflow id instead."""
    return any(
        value == OVERFLOW_ID and not _mapped(value, Path(f"/proc/self/{kind}_map"))
        for value, kind in ((info.st_uid, "uid"), (info.st_gid, "gid"))
    )


def _mapped(value: int, id_map: Path) -> bool:
    """Whether `value` is one of the ids that `id_map` maps into this
    namespace (lines "first-inside first-outside count")."""
    try:
        lines = id_map.read_text().splitlines()
    except OSError:
        return True  # no user namespaces: every id is what it says
    for line in lines:
        inside, _, count = (int(field) for field in line.split())
        if inside <= value < inside + count:
            return True
    return False


def _unreachable(sock: Path, why: str) -> str:
    return (
        f"Postfix (user {POSTFIX_USER}) will not be able to connect to {sock}: {why}; set "
        f"[milter] socket_group = {POSTFIX_USER} for a directory the daemon makes, or add "
        f"{POSTFIX_USER} to the socket's group"
    )


def _allowed(
    info: os.stat_result, uid: int, groups: set[int], *, write: bool = False, search: bool = True
) -> bool:
    if uid == 0:
        return True
    if info.st_uid == uid:
        bits = info.st_mode >> 6
    elif info.st_gid in groups:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    wanted = (0o2 if write else 0) | (0o1 if search else 0)
    return bits & wanted == wanted


def _describe(info: os.stat_result) -> str:
    owner = f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)}"
    return f"{owner} mode {stat.S_IMODE(info.st_mode):04o}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def drop_privileges(account: Account) -> None:
    """Become the unprivileged account for good: its own groups (the socket
    gets its group from the setgid directory), then its gid and uid."""
    os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
