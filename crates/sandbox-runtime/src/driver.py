# The session driver: runs inside the jail as `python3 -I -S -B -u -c <this> CAP CPU_SECS [PACKAGES]`
# and executes cells in one persistent namespace (see docs/sandbox.md, "Sessions").
#
# Protocol (the runtime is the only peer):
#   request  (driver's stdin):  b"<n>\n" + n bytes of UTF-8 code
#   response (driver's stdout): b"R <status> <interrupted> <out_kept> <out_total> <err_kept> <err_total>\n"
#                               + out_kept bytes of the cell's stdout + err_kept bytes of its stderr
# The driver keeps private duplicates of its stdin/stdout for the protocol and points
# descriptors 0, 1 and 2 at /dev/null and two memfds before any cell runs, so nothing a
# cell (or a process it starts) prints can land between frames.
import os
import sys

# `_signal`, not `signal`: the wrapper module imports enum (with functools,
# collections, operator, types), about a third of the interpreter's own start.
import _signal

CAP = int(sys.argv[1])
CPU_SECS = int(sys.argv[2])
if len(sys.argv) > 3 and sys.argv[3]:
    sys.path.append(sys.argv[3])  # SANDBOX_PACKAGES_DIR, bound read-only there

REQ = open(os.dup(0), "rb")
RES = os.dup(1)
_null = os.open("/dev/null", os.O_RDWR)
os.dup2(_null, 0)
os.close(_null)
OUT = os.memfd_create("stdout")
ERR = os.memfd_create("stderr")
os.dup2(OUT, 1)
os.dup2(ERR, 2)
sys.argv = [""]

try:
    import resource
except ImportError:
    resource = None

_state = {"running": False, "interrupted": False}


def _on_sigint(signum, frame):
    # The runtime's step timeout. Outside a cell (reading the next request,
    # writing a response) it is ignored so the protocol is never cut.
    if _state["running"]:
        _state["interrupted"] = True
        raise KeyboardInterrupt


def _cpu_budget():
    # RLIMIT_CPU counts the whole life of the interpreter: give each cell
    # CPU_SECS more than has been used so far (the hard limit bounds the session).
    if resource is None:
        return
    try:
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        want = spent + CPU_SECS
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (want, hard))
    except (OSError, ValueError):
        pass


def _report_exception(exc, code, filename, skip_frames):
    import linecache
    import traceback

    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    if isinstance(exc, SyntaxError) and skip_frames == 0:
        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    _write_all(2, text.encode("utf-8", "replace"))


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError:
            return
        view = view[n:]


def _flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _take(fd):
    total = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    kept = b""
    while len(kept) < min(CAP, total):
        chunk = os.read(fd, min(CAP, total) - len(kept))
        if not chunk:
            break
        kept += chunk
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return kept, total


def _run(code, index):
    namespace = _NAMESPACE
    filename = "<cell %d>" % index
    status = 0
    _state["interrupted"] = False
    _signal.signal(_signal.SIGINT, _on_sigint)
    _cpu_budget()
    try:
        compiled = compile(code, filename, "exec")
    except (SyntaxError, ValueError, OverflowError) as exc:
        _report_exception(exc, code, filename, 0)
        return 1
    try:
        _state["running"] = True
        exec(compiled, namespace)
    except SystemExit as exc:
        _state["running"] = False
        if exc.code is None:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code & 0xFF
        else:
            _write_all(2, (str(exc.code) + "\n").encode("utf-8", "replace"))
            status = 1
    except BaseException as exc:
        _state["running"] = False
        _report_exception(exc, code, filename, 1)
        status = 1
    finally:
        _state["running"] = False
    return status


_NAMESPACE = {"__name__": "__main__", "__builtins__": __builtins__}


def main():
    index = 0
    while True:
        header = REQ.readline()
        if not header:
            return
        n = int(header)
        code = REQ.read(n).decode("utf-8", "replace")
        status = _run(code, index)
        interrupted = 1 if _state["interrupted"] else 0
        # A cell that replaced the handler keeps ignoring the runtime: put ours back.
        _signal.signal(_signal.SIGINT, _on_sigint)
        _flush()
        out, out_total = _take(OUT)
        err, err_total = _take(ERR)
        head = "R %d %d %d %d %d %d\n" % (status, interrupted, len(out), out_total, len(err), err_total)
        _write_all(RES, head.encode("ascii") + out + err)
        index += 1


main()
# The runtime closed the session: end without the interpreter's finalization
# (module teardown, waiting for a cell's non-daemon threads); the jail goes anyway.
os._exit(0)
