import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print(name, r, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
call('io_uring_setup', 425, 8, 0)
call('unshare_newuser', 272, 0x10000000)
call('mount', 165, 0, 0, 0, 0, 0)
call('add_key', 248, 0, 0, 0, 0, 0)
call('ptrace', 101, 0, 0, 0, 0)
call('bpf', 321, 0, 0, 0)
