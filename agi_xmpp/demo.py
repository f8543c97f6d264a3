"""`make run` on a machine with no XMPP server configured: a private Prosody and a demo account.

When the configuration names no account, ``with_demo_account`` starts (or reuses) the local
Prosody kept under ``state_dir/prosody`` with a service account ``asterisk@localhost`` and two
people to chat with, ``alice@localhost`` and ``bob@localhost`` (passwords in
``state_dir/prosody/demo-accounts.json``), and returns a configuration that uses it. A
configuration with accounts is returned unchanged: production never starts a server of ours.
"""

from __future__ import annotations

import dataclasses

import structlog

from .config import AccountConfig, Config, DirectoryEntry

log = structlog.get_logger(__name__)

DEMO_ACCOUNT = "demo"


def with_demo_account(config: Config) -> Config:
    if config.accounts:
        return config
    from .local_prosody import ensure_demo  # only this path needs it

    demo = ensure_demo(config.general.state_dir)
    account = AccountConfig(
        name=DEMO_ACCOUNT,
        username=demo.jid,
        secret=demo.password,
        serverhost=demo.host,
        port=demo.port,
        cafile=str(demo.cafile),
        statusmessage="agi-xmpp demo",
        buddies=tuple(jid for jid, _ in demo.users.values()),
    )
    directory = config.directory or tuple(
        DirectoryEntry(extension=str(100 + n), jid=jid)
        for n, (jid, _) in enumerate(sorted(demo.users.values()), start=1)
    )
    log.info(
        "demo_xmpp_server",
        account=DEMO_ACCOUNT,
        jid=demo.jid,
        port=demo.port,
        people=sorted(jid for jid, _ in demo.users.values()),
        passwords=str(demo.accounts_file),
    )
    return dataclasses.replace(
        config,
        accounts={DEMO_ACCOUNT: account},
        general=dataclasses.replace(config.general, default_account=DEMO_ACCOUNT),
        directory=directory,
    )
