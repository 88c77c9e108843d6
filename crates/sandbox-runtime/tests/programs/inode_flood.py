n = 0
err = None
try:
    while n < 100000:
        open('f%d' % n, 'w').close()
        n += 1
except OSError as e:
    err = e.errno
print(n, err)
