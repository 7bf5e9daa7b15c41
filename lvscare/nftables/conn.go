package nftables

import (
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// socketBuffer is the netlink send and receive buffer for a batch. The whole table goes
// out in one sendmsg and every message is acknowledged, so 100 VIPs of 3 backends
// (about 1,000 messages) overflow the kernel's default of about 200 KiB each way
// (EMSGSIZE on send, ENOBUFS on the acknowledgements).
const socketBuffer = 16 << 20

// newConn opens an nftables connection with buffers big enough for one batch. It forces
// the size past net.core.{w,r}mem_max (lvscare runs with CAP_NET_ADMIN) and falls back
// to the capped size if forcing is not allowed.
func newConn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithSockOptions(func(nc *netlink.Conn) error {
		raw, err := nc.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
				if e := syscall.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer); e != nil {
					if e := syscall.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer); e != nil {
						serr = e
					}
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}))
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	return c, nil
}
