"""AUTH and ACL users with real clients, table-driven against a real
redis-server (7.0) given the same ACL file: every (user, command) pair must
be allowed or refused alike, in the same words (NOAUTH, WRONGPASS, NOPERM),
and ACL SETUSER / DELUSER answer and change users as Redis does. Users live
in the meta group: a change reaches every router, closes a deleted user's
connections, and survives a meta-leader kill and a full restart."""

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis

from tessera_cluster import LocalCluster, free_port

ACL_FILE = """\
user default on >adminpw ~* &* +@all
user tenant1 on >t1pw ~{tenant1}* resetchannels -@all +@read +@connection +@transaction +@ai -ai.modelstore
user writer on >wpw %R~r* %W~w* resetchannels -@all +@all
user off1 off >offpw ~* resetchannels -@all +@all
user nocfg on nopass ~* resetchannels -@all +@all -@dangerous -config|set
"""

# (user, command): the same outcome expected from redis-server and Tessera.
TABLE = [
    ("tenant1", ["GET", "{tenant1}a"]),
    ("tenant1", ["GET", "{tenant2}a"]),
    ("tenant1", ["SET", "{tenant1}a", "1"]),
    ("tenant1", ["MGET", "{tenant1}a", "{tenant1}b"]),
    ("tenant1", ["EXISTS", "{tenant2}a"]),
    ("tenant1", ["DEL", "{tenant1}a"]),
    ("tenant1", ["PING"]),
    ("tenant1", ["FLUSHALL"]),
    ("tenant1", ["KEYS", "*"]),
    ("writer", ["GET", "w1"]),
    ("writer", ["GET", "r1"]),
    ("writer", ["SET", "w1", "x"]),
    ("writer", ["SET", "r1", "x"]),
    ("writer", ["SET", "w1", "x", "GET"]),
    ("writer", ["INCR", "w1"]),
    ("writer", ["DEL", "w1"]),
    ("writer", ["EXPIRE", "w1", "100"]),
    ("writer", ["TTL", "w1"]),
    ("writer", ["TYPE", "r1"]),
    ("writer", ["WATCH", "w1"]),
    ("nocfg", ["FLUSHALL"]),
    ("nocfg", ["CONFIG", "GET", "port"]),
    ("nocfg", ["SET", "k", "v"]),
]

# redis-server has no AI commands: its file leaves their rules out.
REDIS_ACL_FILE = ACL_FILE.replace(" +@ai -ai.modelstore", "")

PASSWORDS = {"tenant1": "t1pw", "writer": "wpw", "nocfg": "x", "default": "adminpw"}


def outcome(r, cmd):
    try:
        r.execute_command(*cmd)
        return "OK"
    except redis.ResponseError as e:
        return str(e)


@pytest.fixture(scope="module")
def acl_setup(request):
    if os.environ.get("TESSERA_EXTERNAL_CLUSTER"):
        pytest.skip("ACL tests start their own cluster")
    d = tempfile.mkdtemp(prefix="tessera-acl-")
    path, redis_path = os.path.join(d, "users.acl"), os.path.join(d, "redis.acl")
    for p, text in ((path, ACL_FILE), (redis_path, REDIS_ACL_FILE)):
        with open(p, "w") as f:
            f.write(text)
    rport = free_port()
    srv = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--aclfile", redis_path, "--dir", d], stdout=subprocess.DEVNULL)
    c = LocalCluster(router_args=["--acl-file", path])
    for _ in range(100):
        assert srv.poll() is None, "redis-server did not start"
        try:
            redis.Redis(port=rport, password="adminpw", retry=None).ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    yield c, rport, path
    if request.session.testsfailed:
        print(c.logs())
    c.stop()
    srv.terminate()
    srv.wait()
    shutil.rmtree(d, ignore_errors=True)


def test_rules_table_against_redis(acl_setup):
    c, rport, _ = acl_setup
    conns = {}
    for user in {u for u, _ in TABLE}:
        conns[user] = (redis.Redis(port=rport, username=user, password=PASSWORDS[user]),
                       redis.Redis(port=c.plain_port, username=user, password=PASSWORDS[user]))
    mismatches = []
    for user, cmd in TABLE:
        ref, ours = conns[user]
        want, got = outcome(ref, cmd), outcome(ours, cmd)
        # Values differ between the stores; refusals must match word for word.
        if (want == "OK") != (got == "OK") or (want != "OK" and want != got):
            mismatches.append((user, cmd, want, got))
        # ACL DRYRUN agrees too.
        admin = redis.Redis(port=c.plain_port, password="adminpw")
        ref_admin = redis.Redis(port=rport, password="adminpw")
        d_want = ref_admin.execute_command("ACL", "DRYRUN", user, *cmd)
        d_got = admin.execute_command("ACL", "DRYRUN", user, *cmd)
        if d_want != d_got:
            mismatches.append(("DRYRUN", user, cmd, d_want, d_got))
    assert not mismatches, "\n".join(map(str, mismatches))


def test_auth_words(acl_setup):
    c, rport, _ = acl_setup
    for port in (rport, c.plain_port):
        r = redis.Redis(port=port)
        with pytest.raises(redis.AuthenticationError, match="Authentication required|HELLO must be called"):
            r.get("a")
        # On the wire, one connection: what a client sees before and after AUTH.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            f = sock.makefile("rb")

            def call(*args):
                sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode())
                                                               for a in args))
                line = f.readline().decode().rstrip("\r\n")
                if line.startswith("$") and line != "$-1":
                    line = f.readline().decode().rstrip("\r\n")
                return line

            assert call("GET", "a") == "-NOAUTH Authentication required."
            assert call("HELLO", "3").startswith("-NOAUTH HELLO must be called with the client already authenticated")
            assert call("HELLO", "3", "SETNAME", "auth").startswith("-NOAUTH HELLO must be called")
            assert call("GET", "a") == "-NOAUTH Authentication required."
            assert call("AUTH", "default", "wrong") == \
                "-WRONGPASS invalid username-password pair or user is disabled."
            assert call("AUTH", "off1", "offpw").startswith("-WRONGPASS")
            assert call("AUTH", "nosuch", "x").startswith("-WRONGPASS")
            assert call("AUTH", "a", "b", "c") == "-ERR syntax error"
            assert call("ACL", "DRYRUN", "tenant1", "QUIT") == "-NOAUTH Authentication required."
            assert call("AUTH", "adminpw") == "+OK"
            assert call("ACL", "WHOAMI") == "default"
        # Before AUTH, Redis's small limits for unauthenticated clients.
        for frame, words in [(b"*1\r\n$20000\r\n", "unauthenticated bulk length"),
                             (b"*11\r\n", "unauthenticated multibulk length")]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(frame)
                assert sock.makefile("rb").readline().decode().rstrip() == f"-ERR Protocol error: {words}"
        # HELLO ... AUTH authenticates and switches protocol at once.
        r3 = redis.Redis(port=port, protocol=3, username="tenant1", password="t1pw")
        assert r3.ping()
        assert r3.get("{tenant1}nothing") is None
        with pytest.raises(redis.exceptions.NoPermissionError, match="'acl|whoami' command"):
            r3.acl_whoami()


def test_acl_introspection_matches_redis(acl_setup):
    c, rport, _ = acl_setup
    ref, ours = redis.Redis(port=rport, password="adminpw"), redis.Redis(port=c.plain_port, password="adminpw")
    assert sorted(ours.acl_users()) == sorted(ref.acl_users())
    for user in ["writer", "off1", "default"]:
        assert ours.execute_command("ACL", "GETUSER", user) == ref.execute_command("ACL", "GETUSER", user), user
    assert ours.execute_command("ACL", "GETUSER", "nosuch") is None
    got = {line.split()[1]: line for line in ours.acl_list()}
    want = {line.split()[1]: line for line in ref.acl_list()}
    for user in ["default", "writer", "off1"]:
        assert got[user] == want[user]
    assert len(ours.acl_genpass()) == 64 and len(ours.acl_genpass(32)) == 8
    assert set(ref.acl_cat()) <= set(ours.acl_cat()) and "ai" in ours.acl_cat()
    assert "ai.modelstore" in ours.acl_cat("ai-write")
    with pytest.raises(redis.ResponseError, match="Unknown category"):
        ours.acl_cat("nosuch")
    # CLIENT LIST names the user.
    t = redis.Redis(port=c.plain_port, username="tenant1", password="t1pw")
    t.ping()
    assert any(cl["user"] == "tenant1" for cl in ours.client_list())


def test_tenant_tensors_and_models(acl_setup):
    c, _, _ = acl_setup
    t = redis.Redis(port=c.plain_port, username="tenant1", password="t1pw")
    t.execute_command("AI.TENSORSET", "{tenant1}x", "FLOAT", 2, "VALUES", 1, 2)
    assert [float(v) for v in t.execute_command("AI.TENSORGET", "{tenant1}x", "VALUES")] == [1.0, 2.0]
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to access one of the keys"):
        t.execute_command("AI.TENSORSET", "{tenant2}x", "FLOAT", 1, "VALUES", 1)
    with pytest.raises(redis.exceptions.NoPermissionError, match="'ai.modelstore' command"):
        t.execute_command("AI.MODELSTORE", "{tenant1}m", "ONNX", "CPU", "BLOB", b"x")
    # A DAG's keys are found by parsing it, wherever LOAD and PERSIST appear.
    dag = ["AI.DAGEXECUTE", "LOAD", 1, "{tenant2}secret", "PERSIST", 1, "{tenant2}victim", "|>",
           "AI.TENSORGET", "{tenant2}secret", "VALUES", "|>", "AI.TENSORSET", "{tenant2}victim", "FLOAT", 1, "VALUES",
           1, "|>", "AI.TENSORSET", "LOAD", "FLOAT", 1, "VALUES", 1]
    with pytest.raises(redis.exceptions.NoPermissionError, match="one of the keys"):
        t.execute_command(*dag)
    admin = redis.Redis(port=c.plain_port, password="adminpw")
    assert admin.execute_command("ACL", "DRYRUN", "tenant1", *dag).startswith(b"This user has no permissions")
    # A refused AI command in MULTI aborts the whole transaction too.
    pipe = t.pipeline(transaction=True)
    pipe.execute_command("AI.TENSORSET", "{tenant1}z", "FLOAT", 1, "VALUES", 1)
    pipe.execute_command("AI.TENSORSET", "{tenant1}z", "FLOAT", 1, "VALUES", 1)
    pipe.execute_command("AI.TENSORGET", "{tenant2}z", "VALUES")
    with pytest.raises(redis.exceptions.NoPermissionError):
        pipe.execute()
    assert t.exists("{tenant1}z") == 0
    # Inside MULTI a refused command is refused when queued and EXEC
    # discards the transaction (redis-py raises the queued command's error).
    pipe = t.pipeline(transaction=True)
    pipe.execute_command("AI.TENSORSET", "{tenant1}y", "FLOAT", 1, "VALUES", 1).set("{tenant1}a", "1")
    with pytest.raises(redis.exceptions.NoPermissionError, match="'set' command"):
        pipe.execute()
    assert t.exists("{tenant1}y") == 0


# ACL changes, made alike on redis-server and Tessera: same answers, same users.
CHANGES = [
    ["ACL", "SETUSER", "alice"],
    ["ACL", "SETUSER", "alice", "on", ">a1", "~{alice}*", "+@read"],
    ["ACL", "SETUSER", "alice", "+set", "%R~shared*", "-get"],
    ["ACL", "SETUSER", "alice", "<nope"],
    ["ACL", "SETUSER", "alice", ">a2", "<a1"],
    ["ACL", "SETUSER", "alice", "+nosuch"],
    ["ACL", "SETUSER", "alice", "~a b"],
    ["ACL", "SETUSER", "a b", "on"],
    ["ACL", "SETUSER", "bob", "on", "nopass", "allkeys", "+@all", "-@dangerous"],
    ["ACL", "SETUSER", "bob", "~x"],
    ["ACL", "SETUSER", "bob", "reset", "on", "#" + "ab" * 32, "~b*", "+get"],
    ["ACL", "DELUSER", "default"],
    ["ACL", "DELUSER", "bob", "nobody"],
    ["ACL", "DELUSER", "bob"],
]


def getuser(r, user):
    """ACL GETUSER, with command rules as a set: Tessera keeps them in the
    order given, Redis reorders them (docs/security.md)."""
    u = r.execute_command("ACL", "GETUSER", user)
    if u and b"commands" in u:
        u[b"commands"] = sorted(u[b"commands"].split())
    return u


def test_setuser_and_deluser_against_redis(acl_setup):
    c, rport, _ = acl_setup
    ref, ours = redis.Redis(port=rport, password="adminpw"), redis.Redis(port=c.plain_port, password="adminpw")
    for cmd in CHANGES:
        assert outcome(ours, cmd) == outcome(ref, cmd), cmd
        for user in ("alice", "bob"):
            assert getuser(ours, user) == getuser(ref, user), (cmd, user)
    got = {line.split()[1]: sorted(line.split()) for line in ours.acl_list()}
    assert got["alice"] == next(sorted(line.split()) for line in ref.acl_list() if line.split()[1] == "alice")
    assert "#" + hashlib.sha256(b"a2").hexdigest() in got["alice"], "passwords are kept as their hashes only"
    assert sorted(ours.acl_users()) == sorted(ref.acl_users())
    alice = redis.Redis(port=c.plain_port, username="alice", password="a2")
    alice.set("{alice}k", "v")
    with pytest.raises(redis.exceptions.NoPermissionError, match="'get' command"):
        alice.get("{alice}k")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=c.plain_port, username="alice", password="a1").ping()
    ours.execute_command("ACL", "DELUSER", "alice")
    ref.execute_command("ACL", "DELUSER", "alice")


def until(check, timeout=10):
    """Polls `check` until it returns a true value (every router reads a
    change within a refresh, about a second)."""
    deadline = time.time() + timeout
    while True:
        try:
            v = check()
            if v:
                return v
        except (redis.RedisError, OSError):
            if time.time() > deadline:
                raise
        if time.time() > deadline:
            raise AssertionError("not within the time allowed")
        time.sleep(0.1)


def raw(port, *cmds):
    """A raw connection that sends each command and reads one reply line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")

    def call(*args):
        sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args))
        return f.readline().decode().rstrip("\r\n")
    for cmd in cmds:
        call(*cmd)
    return sock, call


def test_changes_reach_every_router(acl_setup):
    c, _, _ = acl_setup
    # A second router without --acl-file enforces the cluster's users.
    port2 = int(c.start_router("router-2")["plain"].rsplit(":", 1)[1])
    until(lambda: redis.Redis(port=port2, password="adminpw").ping())
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port2).get("k")
    admin1 = redis.Redis(port=c.plain_port, password="adminpw")
    admin2 = redis.Redis(port=port2, password="adminpw")
    admin1.execute_command("ACL", "SETUSER", "carol", "on", ">cpw", "~{carol}*", "+get", "+set", "+ping")
    carol2 = until(lambda: redis.Redis(port=port2, username="carol", password="cpw", retry=None))
    until(lambda: carol2.set("{carol}a", "1"))
    # An authenticated connection runs as its user's new rules.
    _, carol1 = raw(c.plain_port, ["AUTH", "carol", "cpw"])
    assert carol1("SET", "{carol}b", "2") == "+OK"
    admin2.execute_command("ACL", "SETUSER", "carol", "-set")
    until(lambda: carol1("SET", "{carol}b", "3").startswith("-NOPERM"))
    assert carol1("GET", "{carol}b").startswith("$")
    # Deleting a user closes its connections on every router.
    sock, carol2raw = raw(port2, ["AUTH", "carol", "cpw"])
    assert admin1.execute_command("ACL", "DELUSER", "carol") == 1
    # (Answered until router 2 has read the change; then closed: no reply.)
    until(lambda: carol2raw("PING") == "")
    sock.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port2, username="carol", password="cpw").ping()


def test_acl_load_and_save(acl_setup):
    c, _, path = acl_setup
    admin = redis.Redis(port=c.plain_port, password="adminpw")
    admin.execute_command("ACL", "SETUSER", "saved", "on", ">spw", "~s*", "+get")
    assert admin.execute_command("ACL", "SAVE") == b"OK"
    with open(path) as f:
        text = f.read()
    assert "user saved on #" in text and "spw" not in text
    admin.execute_command("ACL", "SETUSER", "unsaved", "on", "nopass")
    assert admin.execute_command("ACL", "LOAD") == b"OK"
    users = admin.acl_users()
    assert "saved" in users and "unsaved" not in users
    with open(path, "w") as f:
        f.write(ACL_FILE)
    assert admin.execute_command("ACL", "LOAD") == b"OK"
    assert "saved" not in admin.acl_users()
    port2 = int(c.start_router("router-no-file")["plain"].rsplit(":", 1)[1])
    with pytest.raises(redis.ResponseError, match="not configured to use an ACL file"):
        until(lambda: redis.Redis(port=port2, password="adminpw").execute_command("ACL", "SAVE"))


def test_a_router_with_other_flags_enforces_the_clusters_users(acl_setup):
    c, _, _ = acl_setup
    fields = c.start_router("router-requirepass", ["--requirepass", "s3cret"])
    port = int(fields["plain"].rsplit(":", 1)[1])
    until(lambda: redis.Redis(port=port, password="adminpw").ping())
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).get("k")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="s3cret").ping()


def test_users_survive_a_meta_leader_kill_and_a_full_restart():
    if os.environ.get("TESSERA_EXTERNAL_CLUSTER"):
        pytest.skip("starts its own cluster")
    # --requirepass seeds a cluster that has no users.
    c = LocalCluster(router_args=["--requirepass", "s3cret"])
    try:
        admin = redis.Redis(port=c.plain_port, password="s3cret")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=c.plain_port).get("k")
        admin.execute_command("ACL", "SETUSER", "dave", "on", ">dpw", "~*", "+@read")
        leader = c.meta_leader()
        c.kill(leader)
        # Changes go on once the others elect a leader.
        until(lambda: admin.execute_command("ACL", "SETUSER", "erin", "on", ">epw", "+ping"), timeout=30)
        c.restart(leader)
        # Every process stops; the router comes back without --requirepass.
        c.kill("router")
        for n in (1, 2, 3):
            c.kill(f"node-{n}")
        for n in (1, 2, 3):
            c.restart(f"node-{n}")
        port = int(c.start_router("router-after")["plain"].rsplit(":", 1)[1])
        until(lambda: redis.Redis(port=port, password="s3cret").ping(), timeout=30)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).get("k")
        dave = redis.Redis(port=port, username="dave", password="dpw")
        assert dave.get("k") is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            dave.set("k", "v")
        assert redis.Redis(port=port, username="erin", password="epw").ping()
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()


CALLER_SCRIPT = """
def set_incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0], args[0])
    v = redis.execute('INCR', keys[0])
    return torch.tensor(int(str(v)))

def get_other(tensors: List[Tensor], keys: List[str], args: List[str]):
    v = redis.execute('GET', args[0])
    return torch.tensor(1)
"""


def test_scripts_run_with_their_callers_rights(acl_setup):
    c, _, _ = acl_setup
    admin = redis.Redis(port=c.plain_port, password="adminpw")
    admin.execute_command("AI.SCRIPTSTORE", "{s1}script", "CPU", "ENTRY_POINTS", 2, "set_incr", "get_other",
                          "SOURCE", CALLER_SCRIPT)
    admin.set("{s1}secret", "x")
    admin.execute_command("ACL", "SETUSER", "runner", "on", ">rpw", "~{s1}k*", "~{s1}script", "~{s1}out*",
                          "-@all", "+@ai", "+@read", "+@connection", "+@transaction")
    runner = redis.Redis(port=c.plain_port, username="runner", password="rpw")
    run = ["AI.SCRIPTEXECUTE", "{s1}script", "set_incr", "KEYS", 1, "{s1}k", "ARGS", 1, "5", "OUTPUTS", 1, "{s1}out"]
    # The run is allowed; the script's SET is not: it fails, writing nothing.
    with pytest.raises(redis.ResponseError, match="NOPERM this user has no permissions to run the 'set' command"):
        runner.execute_command(*run)
    assert admin.exists("{s1}k", "{s1}out") == 0
    # The same run for a user that may SET and INCR those keys (and for the
    # default user, whose rules allow everything).
    admin.execute_command("ACL", "SETUSER", "runner", "+set", "+incr")
    assert runner.execute_command(*run) == b"OK"
    assert admin.get("{s1}k") == b"6"
    assert admin.execute_command(*run) == b"OK"
    # A key of the script's slot outside the user's patterns.
    other = ["AI.SCRIPTEXECUTE", "{s1}script", "get_other", "KEYS", 1, "{s1}k", "ARGS", 1, "{s1}secret",
             "OUTPUTS", 1, "{s1}out2"]
    with pytest.raises(redis.ResponseError, match="NOPERM this user has no permissions to access one of the keys"):
        runner.execute_command(*other)
    assert admin.execute_command(*other) == b"OK"
    assert admin.delete("{s1}out2") == 1
    # In a DAG, and in a transaction, the same.
    dag = ["AI.DAGEXECUTE", "ROUTING", "{s1}k", "|>", "AI.SCRIPTEXECUTE", "{s1}script", "get_other", "KEYS", 1,
           "{s1}k", "ARGS", 1, "{s1}secret", "OUTPUTS", 1, "t"]
    reply = runner.execute_command(*dag)
    assert any("no permissions to access one of the keys" in str(r) for r in reply), reply
    pipe = runner.pipeline(transaction=True)
    pipe.execute_command(*other)
    assert "no permissions to access one of the keys" in str(pipe.execute(raise_on_error=False)[0])
    assert admin.exists("{s1}out2") == 0


def test_acl_log_against_redis(acl_setup):
    c, rport, _ = acl_setup
    ref, ours = redis.Redis(port=rport, password="adminpw"), redis.Redis(port=c.plain_port, password="adminpw")
    keep = ("count", "reason", "context", "object", "username")
    logs = []
    for port, admin in ((rport, ref), (c.plain_port, ours)):
        admin.execute_command("ACL", "LOG", "RESET")
        t = redis.Redis(port=port, username="tenant1", password="t1pw")
        for cmd in (["GET", "{tenant2}a"], ["SET", "{tenant1}a", "1"], ["GET", "{tenant2}a"]):
            with pytest.raises(redis.exceptions.NoPermissionError):
                t.execute_command(*cmd)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, username="writer", password="wrong").ping()
        pipe = t.pipeline(transaction=True)
        pipe.execute_command("GET", "{tenant1}a").execute_command("FLUSHALL")
        with pytest.raises(redis.exceptions.NoPermissionError):
            pipe.execute()
        entries = [{(k.decode() if isinstance(k, bytes) else k): v for k, v in e.items()}
                   for e in admin.execute_command("ACL", "LOG")]
        assert all("client-info" in e and "age-seconds" in e for e in entries), entries
        logs.append([{k: e[k] for k in keep} for e in entries])
        assert len(admin.execute_command("ACL", "LOG", 1)) == 1
    ref_log, our_log = logs
    assert our_log == ref_log
    with pytest.raises(redis.ResponseError, match="not an integer"):
        ours.execute_command("ACL", "LOG", "x")
