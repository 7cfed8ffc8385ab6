/*
 * resolver._batchio: batched datagram I/O for the UDP listener (issue 17).
 *
 * Two functions, recvmmsg and sendmmsg, that move datagrams between the kernel
 * and Python bytes in one system call each, with their source or destination
 * addresses as the socket module writes them. That is all this file does: it
 * never looks inside a datagram. No packet is parsed in C (wire.py does that),
 * because a parser of hostile input in C is where DNS servers get their CVEs.
 *
 * Optional, in the manner of MarkupSafe's speedups: setup.py builds it when a
 * compiler is there, and resolver/batchio.py falls back to recvfrom/sendto
 * without it (or with SINKHOLE_NO_SPEEDUPS=1).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* The kernel takes at most UIO_MAXIOV (1024) messages per call. */
#define MAX_BATCH 1024
/* The largest UDP payload there is. */
#define MAX_DATAGRAM 65535

/* The address tuple of the socket module: (host, port) or (host, port, flowinfo, scope_id). */
static PyObject *
make_addr(const struct sockaddr_storage *ss, socklen_t len, PyObject **last_host,
          struct sockaddr_storage *last)
{
    char text[INET6_ADDRSTRLEN];
    PyObject *host;

    if (ss->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        const struct sockaddr_in *b = (const struct sockaddr_in *)last;
        /* Consecutive datagrams from one host share one str. */
        if (*last_host != NULL && last->ss_family == AF_INET &&
            a->sin_addr.s_addr == b->sin_addr.s_addr) {
            host = *last_host;
            Py_INCREF(host);
        }
        else {
            if (inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text)) == NULL)
                return PyErr_SetFromErrno(PyExc_OSError);
            host = PyUnicode_FromString(text);
            if (host == NULL)
                return NULL;
            Py_XSETREF(*last_host, Py_NewRef(host));
            memcpy(last, ss, sizeof(struct sockaddr_in));
        }
        return Py_BuildValue("(Ni)", host, (int)ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)last;
        if (*last_host != NULL && last->ss_family == AF_INET6 &&
            memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0) {
            host = *last_host;
            Py_INCREF(host);
        }
        else {
            if (inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text)) == NULL)
                return PyErr_SetFromErrno(PyExc_OSError);
            host = PyUnicode_FromString(text);
            if (host == NULL)
                return NULL;
            Py_XSETREF(*last_host, Py_NewRef(host));
            memcpy(last, ss, sizeof(struct sockaddr_in6));
        }
        return Py_BuildValue("(NiII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    /* Not an IP socket (or no address): what recvfrom gives for an unnamed peer. */
    Py_RETURN_NONE;
}

PyDoc_STRVAR(recvmmsg_doc,
"recvmmsg(fd, count, size) -> list of (bytes, address)\n\n"
"Read up to `count` datagrams waiting on the non-blocking socket `fd` in one\n"
"system call, each truncated to `size` bytes as recvfrom(size) would. An empty\n"
"list when none is waiting (EAGAIN); OSError for any other error when nothing\n"
"was read.");

static PyObject *
batchio_recvmmsg(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd, count;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "iin:recvmmsg", &fd, &count, &size))
        return NULL;
    if (count < 1 || count > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "count must be 1..%d", MAX_BATCH);
        return NULL;
    }
    if (size < 1 || size > MAX_DATAGRAM) {
        PyErr_Format(PyExc_ValueError, "size must be 1..%d", MAX_DATAGRAM);
        return NULL;
    }

    char *buf = PyMem_RawMalloc((size_t)count * (size_t)size);
    struct mmsghdr *msgs = PyMem_RawCalloc((size_t)count, sizeof(struct mmsghdr));
    struct iovec *iov = PyMem_RawMalloc((size_t)count * sizeof(struct iovec));
    struct sockaddr_storage *names =
        PyMem_RawMalloc((size_t)count * sizeof(struct sockaddr_storage));
    PyObject *result = NULL, *last_host = NULL;
    struct sockaddr_storage last;
    int got, saved_errno;

    if (buf == NULL || msgs == NULL || iov == NULL || names == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = buf + (size_t)i * (size_t)size;
        iov[i].iov_len = (size_t)size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    }

    Py_BEGIN_ALLOW_THREADS
    got = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    saved_errno = errno;
    Py_END_ALLOW_THREADS

    if (got < 0) {
        if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK) {
            result = PyList_New(0);
            goto done;
        }
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyList_New(got);
    if (result == NULL)
        goto done;
    memset(&last, 0, sizeof(last));
    for (int i = 0; i < got; i++) {
        /* Without MSG_TRUNC in the flags, msg_len is what was copied: at most size. */
        PyObject *data = PyBytes_FromStringAndSize(iov[i].iov_base, (Py_ssize_t)msgs[i].msg_len);
        PyObject *addr = data ? make_addr(&names[i], msgs[i].msg_hdr.msg_namelen, &last_host,
                                          &last)
                              : NULL;
        PyObject *item = addr ? PyTuple_Pack(2, data, addr) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(addr);
        if (item == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, item);
    }

done:
    Py_XDECREF(last_host);
    PyMem_RawFree(buf);
    PyMem_RawFree(msgs);
    PyMem_RawFree(iov);
    PyMem_RawFree(names);
    return result;
}

/* (host, port) for AF_INET, (host, port[, flowinfo[, scope_id]]) for AF_INET6, numeric hosts
   only; a path for AF_UNIX. */
static int
parse_addr(int family, PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;

    memset(ss, 0, sizeof(*ss));
    if (family != AF_UNIX && !PyTuple_Check(addr)) {
        PyErr_SetString(PyExc_TypeError, "an address must be a tuple");
        return -1;
    }
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (!PyArg_ParseTuple(addr, "si:sendmmsg", &host, &port))
            return -1;
        if (port < 0 || port > 65535) {
            PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
            return -1;
        }
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not a numeric IPv4 address: %R", addr);
            return -1;
        }
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        *len = sizeof(*a);
        return 0;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        if (!PyArg_ParseTuple(addr, "si|II:sendmmsg", &host, &port, &flowinfo, &scope_id))
            return -1;
        if (port < 0 || port > 65535) {
            PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
            return -1;
        }
        if (flowinfo > 0xfffff) {
            PyErr_SetString(PyExc_OverflowError, "flowinfo must be 0-1048575.");
            return -1;
        }
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not a numeric IPv6 address: %R", addr);
            return -1;
        }
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        a->sin6_flowinfo = htonl(flowinfo);
        a->sin6_scope_id = scope_id;
        *len = sizeof(*a);
        return 0;
    }
    if (family == AF_UNIX) {
        /* A path: not served on, but the one datagram socket on which a test can fill a
           send buffer (over loopback UDP the kernel never holds a datagram back). */
        struct sockaddr_un *a = (struct sockaddr_un *)ss;
        PyObject *path;
        if (!PyUnicode_Check(addr)) {
            PyErr_SetString(PyExc_TypeError, "an AF_UNIX address must be a str");
            return -1;
        }
        path = PyUnicode_EncodeFSDefault(addr);
        if (path == NULL)
            return -1;
        if ((size_t)PyBytes_GET_SIZE(path) >= sizeof(a->sun_path)) {
            Py_DECREF(path);
            PyErr_SetString(PyExc_OSError, "AF_UNIX path too long");
            return -1;
        }
        a->sun_family = AF_UNIX;
        memcpy(a->sun_path, PyBytes_AS_STRING(path), (size_t)PyBytes_GET_SIZE(path));
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + PyBytes_GET_SIZE(path) + 1);
        Py_DECREF(path);
        return 0;
    }
    PyErr_SetString(PyExc_ValueError, "family must be AF_INET, AF_INET6 or AF_UNIX");
    return -1;
}

PyDoc_STRVAR(sendmmsg_doc,
"sendmmsg(fd, family, items, start) -> int\n\n"
"Send items[start:] (a list of (bytes, address)) on the non-blocking socket\n"
"`fd` in one system call (at most 1024 of them), and return how many went.\n"
"An address of None sends to a connected socket's peer, as send() does.\n"
"When the first of them cannot go, raise OSError as sendto would\n"
"(BlockingIOError when the send buffer is full); the caller keeps the rest.");

static PyObject *
batchio_sendmmsg(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd, family;
    PyObject *items;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "iiO!n:sendmmsg", &fd, &family, &PyList_Type, &items, &start))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(items);
    if (start < 0 || start > total) {
        PyErr_SetString(PyExc_IndexError, "start out of range");
        return NULL;
    }
    Py_ssize_t count = total - start;
    if (count > MAX_BATCH)
        count = MAX_BATCH;
    if (count == 0)
        return PyLong_FromLong(0);

    struct mmsghdr *msgs = PyMem_RawCalloc((size_t)count, sizeof(struct mmsghdr));
    struct iovec *iov = PyMem_RawMalloc((size_t)count * sizeof(struct iovec));
    struct sockaddr_storage *names =
        PyMem_RawMalloc((size_t)count * sizeof(struct sockaddr_storage));
    Py_buffer *views = PyMem_RawCalloc((size_t)count, sizeof(Py_buffer));
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    int sent, saved_errno;

    if (msgs == NULL || iov == NULL || names == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *last_host = NULL;  /* borrowed: the host str of the last IPv4 address parsed */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, start + i);
        socklen_t namelen;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "items must be (bytes, address) tuples");
            goto done;
        }
        PyObject *addr = PyTuple_GET_ITEM(item, 1);
        if (addr == Py_None) {
            /* A connected socket's peer, as send() sends: no address given. */
            namelen = 0;
            last_host = NULL;
            goto parsed;
        }
        /* The answers of one wake-up mostly go to one host, whose str recvmmsg shares
           between its datagrams: the same object, the same address; only the port is read. */
        if (family == AF_INET && i > 0 && last_host != NULL && PyTuple_Check(addr) &&
            PyTuple_GET_SIZE(addr) == 2 && PyTuple_GET_ITEM(addr, 0) == last_host &&
            PyLong_CheckExact(PyTuple_GET_ITEM(addr, 1))) {
            long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
            if (port >= 0 && port <= 65535) {
                memcpy(&names[i], &names[i - 1], sizeof(struct sockaddr_in));
                ((struct sockaddr_in *)&names[i])->sin_port = htons((unsigned short)port);
                namelen = sizeof(struct sockaddr_in);
                goto parsed;
            }
            PyErr_Clear();
        }
        if (parse_addr(family, addr, &names[i], &namelen) < 0)
            goto done;
        last_host = (family == AF_INET && PyTuple_Check(addr) && PyTuple_GET_SIZE(addr) >= 1)
                        ? PyTuple_GET_ITEM(addr, 0)
                        : NULL;
    parsed:
        /* The buffer is held until the call returns: the list may change while the GIL is free. */
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[i], PyBUF_SIMPLE) < 0)
            goto done;
        held = i + 1;
        iov[i].iov_base = views[i].buf;
        iov[i].iov_len = (size_t)views[i].len;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = namelen ? &names[i] : NULL;
        msgs[i].msg_hdr.msg_namelen = namelen;
    }

    Py_BEGIN_ALLOW_THREADS
    sent = sendmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT);
    saved_errno = errno;
    Py_END_ALLOW_THREADS

    if (sent < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromLong(sent);

done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_RawFree(msgs);
    PyMem_RawFree(iov);
    PyMem_RawFree(names);
    PyMem_RawFree(views);
    return result;
}

static PyMethodDef batchio_methods[] = {
    {"recvmmsg", batchio_recvmmsg, METH_VARARGS, recvmmsg_doc},
    {"sendmmsg", batchio_sendmmsg, METH_VARARGS, sendmmsg_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef batchio_module = {
    PyModuleDef_HEAD_INIT,
    "resolver._batchio",
    "Batched datagram I/O (recvmmsg/sendmmsg); moves buffers, parses nothing.",
    -1,
    batchio_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__batchio(void)
{
    PyObject *m = PyModule_Create(&batchio_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
