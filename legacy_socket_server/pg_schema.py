"""The PostgreSQL schema and its migrations (docs/scaling.md#the-schema).

A hand-kept, numbered list rather than a migration tool: the schema is small and
owned by this one program, and each step runs in the transaction that records it.
Version 3 makes the database the meeting point of several cores: message ids and
change positions are assigned inside ``chat_apply`` under one transaction-level lock,
so they increase in commit order and a reader asking for "changes after position P"
never misses one that committed late; each change is also kept in ``changes`` and
announced with ``NOTIFY chat_changes`` (its position only: readers fetch the rows).
"""

from __future__ import annotations

import logging

import asyncpg

from .storage_files import StoreError

log = logging.getLogger(__name__)

#: The transaction-level advisory lock every change takes (ids and positions in
#: commit order); migrations take their own.
CHANGE_LOCK = 7_277_022
_MIGRATION_LOCK = 4711

#: Schema changes in order; ``schema_version`` holds how many have run.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO meta VALUES ('boot', 0);
    CREATE TABLE messages (
        id bigint PRIMARY KEY,
        sender text NOT NULL,
        recipient text,
        room text,
        text text NOT NULL,
        ts text NOT NULL,
        client_msg_id text,
        CHECK ((recipient IS NULL) <> (room IS NULL))
    );
    CREATE INDEX messages_room ON messages (room, id) WHERE room IS NOT NULL;
    CREATE INDEX messages_pair
        ON messages (LEAST(sender, recipient), GREATEST(sender, recipient), id)
        WHERE recipient IS NOT NULL;
    CREATE TABLE read_markers (
        username text, peer text, up_to bigint NOT NULL, PRIMARY KEY (username, peer)
    );
    CREATE TABLE rooms (name text PRIMARY KEY, private boolean NOT NULL);
    CREATE TABLE memberships (
        room text REFERENCES rooms ON DELETE CASCADE, username text,
        PRIMARY KEY (room, username)
    );
    CREATE TABLE room_markers (
        username text, room text, up_to bigint NOT NULL, PRIMARY KEY (username, room)
    );
    CREATE TABLE enrolled (username text PRIMARY KEY);
    """,
    # One statement per transaction: the records of a loop turn go in as one JSON array
    # and are applied here, as the file journal's replay applies them (a membership of
    # an unknown room is ignored, markers only move forward), except that a message id
    # already stored fails the write: ids are the core's, a collision is a bug.
    """
    CREATE FUNCTION chat_apply(records jsonb, batch bigint) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        r jsonb;
        m jsonb;
        added int;
    BEGIN
        FOR r IN SELECT value FROM jsonb_array_elements(records) LOOP
            CASE r->>'op'
            WHEN 'message' THEN
                m := r->'message';
                INSERT INTO messages (id, sender, recipient, room, text, ts, client_msg_id)
                VALUES ((m->>'id')::bigint, m->>'from', m->>'to', m->>'room', m->>'text',
                        m->>'ts', m->>'client_msg_id')
                ON CONFLICT (id) DO NOTHING;
                GET DIAGNOSTICS added = ROW_COUNT;
                IF added = 0 THEN
                    RAISE EXCEPTION 'message id % is stored already', m->>'id';
                END IF;
            WHEN 'read' THEN
                IF r ? 'room' THEN
                    INSERT INTO room_markers AS t
                    VALUES (r->>'user', r->>'room', (r->>'up_to')::bigint)
                    ON CONFLICT (username, room)
                    DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                ELSE
                    INSERT INTO read_markers AS t
                    VALUES (r->>'user', r->>'with', (r->>'up_to')::bigint)
                    ON CONFLICT (username, peer)
                    DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                END IF;
            WHEN 'room' THEN
                INSERT INTO rooms VALUES (r->>'room', (r->>'private')::boolean)
                ON CONFLICT DO NOTHING;
            WHEN 'member' THEN
                IF EXISTS (SELECT 1 FROM rooms WHERE name = r->>'room') THEN
                    INSERT INTO enrolled VALUES (r->>'user') ON CONFLICT DO NOTHING;
                    IF (r->>'joined')::boolean THEN
                        INSERT INTO memberships VALUES (r->>'room', r->>'user')
                        ON CONFLICT DO NOTHING;
                        INSERT INTO room_markers AS t
                        VALUES (r->>'user', r->>'room', COALESCE((r->>'marker')::bigint, 0))
                        ON CONFLICT (username, room)
                        DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                    ELSE
                        DELETE FROM memberships WHERE room = r->>'room' AND username = r->>'user';
                    END IF;
                END IF;
            ELSE
                NULL;  -- ``boot`` and anything unknown: no row (boot is counted at open)
            END CASE;
        END LOOP;
        UPDATE meta SET value = batch WHERE key = 'batch';
    END
    $$;
    """,
    # Version 3: several cores on one database. Users and resume tokens move here; each
    # change is numbered (``pos``) and kept in ``changes`` for the other cores; cores
    # hold leases (``cores``) and say who is logged in on them (``presence``).
    """
    CREATE TABLE users (name text PRIMARY KEY, password_hash text NOT NULL);
    CREATE TABLE tokens (
        digest text PRIMARY KEY, username text NOT NULL, pw text NOT NULL,
        used double precision NOT NULL
    );
    CREATE TABLE cores (
        id bigint PRIMARY KEY, alive_until timestamptz NOT NULL, batch bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE presence (
        core bigint NOT NULL REFERENCES cores ON DELETE CASCADE, username text NOT NULL,
        PRIMARY KEY (core, username)
    );
    CREATE TABLE changes (
        pos bigint PRIMARY KEY, core bigint NOT NULL, batch bigint NOT NULL,
        records jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX changes_at ON changes (at);
    CREATE UNIQUE INDEX messages_client_msg_id
        ON messages (sender, client_msg_id) WHERE client_msg_id IS NOT NULL;
    INSERT INTO meta VALUES ('next_id', (SELECT COALESCE(max(id), 0) + 1 FROM messages))
        ON CONFLICT (key) DO NOTHING;
    INSERT INTO meta VALUES ('pos', 0) ON CONFLICT (key) DO NOTHING;
    DROP FUNCTION chat_apply(jsonb, bigint);

    -- A message stored as the contract shows it (the keys in the core's order are
    -- rebuilt by the reader; jsonb keeps no order).
    CREATE FUNCTION chat_message_json(m messages) RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
        SELECT jsonb_strip_nulls(jsonb_build_object(
            'id', m.id, 'from', m.sender, 'to', m.recipient, 'room', m.room,
            'text', m.text, 'ts', m.ts, 'client_msg_id', m.client_msg_id))
    $$;

    -- Append one change (the records as applied) and announce its position.
    CREATE FUNCTION chat_change(p_core bigint, p_batch bigint, p_records jsonb) RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE
        p bigint;
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'pos' RETURNING value INTO p;
        INSERT INTO changes (pos, core, batch, records) VALUES (p, p_core, p_batch, p_records);
        PERFORM pg_notify('chat_changes', p::text);
        RETURN p;
    END
    $$;

    -- A core's records of one loop turn (or part of them), applied as the file
    -- journal's replay applies them, with what only the database can decide:
    -- a message without an id gets the next one; a client_msg_id its sender used
    -- before becomes {"op": "duplicate", "message": the stored one}; a room whose name
    -- is taken, and the members written with its creation ("new"), get "conflict".
    -- Returns {"pos": the change's position, "records": the records as applied}.
    CREATE FUNCTION chat_apply(p_records jsonb, p_core bigint, p_batch bigint) RETURNS jsonb
    LANGUAGE plpgsql AS $$
    DECLARE
        r jsonb;
        m jsonb;
        mid bigint;
        added int;
        old messages;
        -- Room names refused in this transaction, across the calls of one batch in parts:
        -- the members written with such a creation are dropped even in a later call.
        taken text := current_setting('chat.taken', true);
        -- An array, not jsonb: appending to an array is amortized O(1), concatenating
        -- jsonb copies it (a batch of thousands of records was quadratic).
        applied jsonb[] := '{}';
        p bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock(7277022);
        FOR r IN SELECT value FROM jsonb_array_elements(p_records) LOOP
            CASE r->>'op'
            WHEN 'message' THEN
                m := r->'message';
                old := NULL;
                IF m ? 'client_msg_id' THEN
                    SELECT * INTO old FROM messages
                    WHERE sender = m->>'from' AND client_msg_id = m->>'client_msg_id';
                END IF;
                IF old.id IS NOT NULL THEN
                    r := jsonb_build_object('op', 'duplicate', 'message', chat_message_json(old));
                ELSE
                    IF jsonb_typeof(m->'id') = 'number' THEN  -- an import keeps its ids
                        mid := (m->>'id')::bigint;
                        UPDATE meta SET value = GREATEST(value, mid + 1) WHERE key = 'next_id';
                    ELSE
                        UPDATE meta SET value = value + 1 WHERE key = 'next_id'
                        RETURNING value - 1 INTO mid;
                        m := jsonb_set(m, '{id}', to_jsonb(mid));
                        r := jsonb_set(r, '{message}', m);
                    END IF;
                    INSERT INTO messages (id, sender, recipient, room, text, ts, client_msg_id)
                    VALUES (mid, m->>'from', m->>'to', m->>'room', m->>'text', m->>'ts',
                            m->>'client_msg_id')
                    ON CONFLICT (id) DO NOTHING;
                    GET DIAGNOSTICS added = ROW_COUNT;
                    IF added = 0 THEN
                        RAISE EXCEPTION 'message id % is stored already', mid;
                    END IF;
                END IF;
            WHEN 'read' THEN
                IF r ? 'room' THEN
                    INSERT INTO room_markers AS t
                    VALUES (r->>'user', r->>'room', (r->>'up_to')::bigint)
                    ON CONFLICT (username, room)
                    DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                ELSE
                    INSERT INTO read_markers AS t
                    VALUES (r->>'user', r->>'with', (r->>'up_to')::bigint)
                    ON CONFLICT (username, peer)
                    DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                END IF;
            WHEN 'room' THEN
                INSERT INTO rooms VALUES (r->>'room', (r->>'private')::boolean)
                ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS added = ROW_COUNT;
                IF added = 0 THEN
                    taken := COALESCE(taken, '') || ',' || (r->>'room') || ',';
                    PERFORM set_config('chat.taken', taken, true);
                    r := r || '{"conflict": true}';
                END IF;
            WHEN 'member' THEN
                IF COALESCE((r->>'new')::boolean, false)
                   AND strpos(COALESCE(taken, ''), ',' || (r->>'room') || ',') > 0 THEN
                    r := r || '{"conflict": true}';
                ELSIF EXISTS (SELECT 1 FROM rooms WHERE name = r->>'room') THEN
                    INSERT INTO enrolled VALUES (r->>'user') ON CONFLICT DO NOTHING;
                    IF (r->>'joined')::boolean THEN
                        INSERT INTO memberships VALUES (r->>'room', r->>'user')
                        ON CONFLICT DO NOTHING;
                        INSERT INTO room_markers AS t
                        VALUES (r->>'user', r->>'room', COALESCE((r->>'marker')::bigint, 0))
                        ON CONFLICT (username, room)
                        DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                    ELSE
                        DELETE FROM memberships WHERE room = r->>'room' AND username = r->>'user';
                    END IF;
                END IF;
            WHEN 'presence' THEN
                -- A core dropped for a lapsed lease is not in ``cores`` until it registers
                -- again (and then announces everyone anew): its record must not reach the
                -- others, or a user of a core that then dies is a ghost for ever.
                IF NOT EXISTS (SELECT 1 FROM cores WHERE id = p_core) THEN
                    r := r || '{"conflict": true}';
                ELSIF (r->>'online')::boolean THEN
                    INSERT INTO presence VALUES (p_core, r->>'user') ON CONFLICT DO NOTHING;
                ELSE
                    DELETE FROM presence WHERE core = p_core AND username = r->>'user';
                END IF;
                r := r || jsonb_build_object('core', p_core);
            WHEN 'presence_set' THEN
                -- Everyone logged in on this core, replacing what the database had: how a
                -- core repairs a presence record that failed, or re-announces itself.
                IF NOT EXISTS (SELECT 1 FROM cores WHERE id = p_core) THEN
                    r := r || '{"conflict": true}';
                ELSE
                    DELETE FROM presence WHERE core = p_core;
                    INSERT INTO presence
                    SELECT p_core, u FROM jsonb_array_elements_text(r->'users') AS u
                    ON CONFLICT DO NOTHING;
                END IF;
                r := r || jsonb_build_object('core', p_core);
            WHEN 'token' THEN
                INSERT INTO tokens VALUES (r->>'digest', r->>'user', r->>'pw', (r->>'used')::float8)
                ON CONFLICT (digest) DO UPDATE SET used = GREATEST(tokens.used, EXCLUDED.used);
            WHEN 'token_used' THEN
                -- Only ever an update: a token revoked meanwhile (on another core) stays
                -- revoked.
                UPDATE tokens SET used = GREATEST(used, (r->>'used')::float8)
                WHERE digest = r->>'digest';
            WHEN 'untoken' THEN
                DELETE FROM tokens WHERE digest = r->>'digest';
            WHEN 'user' THEN
                IF r->>'password_hash' IS NULL THEN
                    DELETE FROM users WHERE name = r->>'name';
                ELSE
                    INSERT INTO users VALUES (r->>'name', r->>'password_hash')
                    ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash;
                END IF;
            ELSE
                NULL;  -- ``boot`` and anything unknown: no row (boot is counted at open)
            END CASE;
            applied := applied || r;
        END LOOP;
        UPDATE cores SET batch = p_batch WHERE id = p_core;
        p := chat_change(p_core, p_batch, to_jsonb(applied));
        RETURN jsonb_build_object('pos', p, 'records', to_jsonb(applied));
    END
    $$;

    -- Cores whose lease ran out (killed, cut off) are dropped, with who was logged in
    -- on them; every core hears of it as a change of core 0 (no core's own).
    CREATE FUNCTION chat_reap() RETURNS int
    LANGUAGE plpgsql AS $$
    DECLARE
        gone bigint;
        n int := 0;
    BEGIN
        PERFORM pg_advisory_xact_lock(7277022);
        FOR gone IN DELETE FROM cores WHERE alive_until < now() RETURNING id LOOP
            PERFORM chat_change(0, 0, jsonb_build_array(
                jsonb_build_object('op', 'core_gone', 'core', gone)));
            n := n + 1;
        END LOOP;
        RETURN n;
    END
    $$;
    """,
)


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date; return the version found (0: a new database).
    Refuses a newer schema than this program knows."""
    async with conn.transaction():
        # One core migrates at a time; the others wait here, then find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database's schema is version {version}, newer than this program "
                f"knows ({len(MIGRATIONS)}): run the newer version of the core"
            )
        for step in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[step])
            await conn.execute("INSERT INTO schema_version VALUES ($1)", step + 1)
            log.info("database schema migrated to version %d", step + 1)
    return version
