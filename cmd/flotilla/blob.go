package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/internal/bandwidth"
	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
)

// The blob commands run the peer-to-peer layer distribution on its own, so
// benchmarks and debugging can drive real processes before (and besides)
// the rollout wiring. Hidden: operators use `flotilla apply`.
func newBlobCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "blob",
		Short:  "Serve and fetch blobs peer-to-peer (benchmark and debug tool)",
		Hidden: true,
		Example: `  flotilla blob pieces layer.tar > pieces.json
  flotilla blob serve --dir /tmp/seed --listen 10.0.0.1:7443 --tracker-listen 10.0.0.1:7444 --seed layer.tar --ca ca.pem --cert c.pem --key k.pem
  flotilla blob fetch --list pieces.json --tracker https://10.0.0.1:7444 --dir /tmp/n1 --listen 10.0.0.11:7443 --id n1 --ca ca.pem --cert n.pem --key nk.pem`,
	}
	cmd.PersistentPreRunE = func(c *cobra.Command, args []string) error {
		return setupLoggingFrom(c) // cobra runs one PersistentPreRunE: this one, not the root's
	}
	cmd.AddCommand(newBlobPiecesCmd(), newBlobServeCmd(), newBlobFetchCmd())
	return cmd
}

func newBlobPiecesCmd() *cobra.Command {
	var pieceSize string
	cmd := &cobra.Command{
		Use:     "pieces FILE",
		Short:   "Print the piece list (JSON) of a file",
		Example: "  flotilla blob pieces layer.tar > pieces.json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := parsePieceSize(pieceSize)
			if err != nil {
				return err
			}
			l, err := pieces.ComputeFile(args[0], ps)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(l)
		},
	}
	cmd.Flags().StringVar(&pieceSize, "piece-size", "", "piece size, e.g. 256KiB (default: chosen by the blob's size)")
	return cmd
}

func parsePieceSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := human.ParseBytes(s)
	if err != nil || v <= 0 || v > pieces.MaxPieceSize {
		return 0, fmt.Errorf("--piece-size %q: want a size from 1B to 64MiB, e.g. 256KiB", s)
	}
	return v, nil
}

// blobPeerFlags are the flags every piece-serving process shares.
type blobPeerFlags struct {
	dir, listen, advertise, id string
	ca, cert, key              string
	uploadLimit                string
}

func (f *blobPeerFlags) register(cmd *cobra.Command, defaultID string) {
	cmd.Flags().StringVar(&f.dir, "dir", "", "blob store directory (required)")
	cmd.Flags().StringVar(&f.listen, "listen", "", "address of this peer's piece server, host:port (required)")
	cmd.Flags().StringVar(&f.advertise, "advertise", "", "URL other peers reach the piece server at (default https://<listen>)")
	cmd.Flags().StringVar(&f.id, "id", defaultID, "peer ID announced to the tracker")
	cmd.Flags().StringVar(&f.ca, "ca", "", "cluster CA certificate, PEM (required)")
	cmd.Flags().StringVar(&f.cert, "cert", "", "this peer's certificate, PEM (required)")
	cmd.Flags().StringVar(&f.key, "key", "", "this peer's key, PEM (required)")
	cmd.Flags().StringVar(&f.uploadLimit, "upload-limit", "", "cap on bytes sent to peers, e.g. 50MB/s or 100mbit (default none)")
	for _, name := range []string{"dir", "listen", "ca", "cert", "key"} {
		cmd.MarkFlagRequired(name)
	}
}

// peer is a running piece server with its store and mTLS client.
type blobPeer struct {
	store  *pieces.Store
	client *http.Client
	self   pieces.Peer
	srv    *httpserve.Server
	errC   chan error
}

func (f *blobPeerFlags) start(extra map[string]http.Handler) (*blobPeer, error) {
	ca, cert, key, err := pieces.LoadTLSFiles(f.ca, f.cert, f.key)
	if err != nil {
		return nil, err
	}
	serverTLS, err := pieces.ServerTLSConfig(ca, cert, key)
	if err != nil {
		return nil, err
	}
	clientTLS, err := pieces.ClientTLSConfig(ca, cert, key)
	if err != nil {
		return nil, err
	}
	up, err := bandwidth.Parse(f.uploadLimit)
	if err != nil {
		return nil, fmt.Errorf("--upload-limit: %w", err)
	}
	st, err := pieces.OpenStore(f.dir)
	if err != nil {
		return nil, err
	}
	adv := f.advertise
	if adv == "" {
		adv = "https://" + f.listen
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", httpserve.Streaming(pieces.NewHandler(st, pieces.WithUploadLimit(pieces.NewLimiter(int64(up))))))
	for pattern, h := range extra {
		mux.Handle(pattern, h)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	p := &blobPeer{store: st, client: fetch.NewClient(clientTLS), self: pieces.Peer{ID: f.id, Addr: adv},
		srv:  httpserve.New(mux, serverTLS, slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug)),
		errC: make(chan error, 2)}
	go func() { p.errC <- p.srv.ServeTLS(ln, "", "") }()
	slog.Info("serving pieces", "id", f.id, "listen", f.listen, "advertise", adv, "dir", f.dir)
	return p, nil
}

func (p *blobPeer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p.srv.Shutdown(ctx)
	p.store.Close()
}

// localTracker serves fetch.Tracker from the tracker in this process (the seed's own).
type localTracker struct{ t *tracker.Tracker }

func (l localTracker) Announce(_ context.Context, a pieces.Announcement) error {
	return l.t.Announce(a)
}
func (l localTracker) Peers(_ context.Context, d v1.Hash) ([]pieces.PeerState, error) {
	return l.t.Peers(d), nil
}

func newBlobServeCmd() *cobra.Command {
	var (
		pf            blobPeerFlags
		seeds         []string
		trackerListen string
		trackerURL    string
		pieceSize     string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the pieces in a store (a seed with --seed), optionally with the tracker",
		Example: `  flotilla blob serve --dir /tmp/seed --listen 10.0.0.1:7443 --tracker-listen 10.0.0.1:7444 \
      --seed layer.tar --ca ca.pem --cert seed.pem --key seed-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ps, err := parsePieceSize(pieceSize)
			if err != nil {
				return err
			}
			var tr fetch.Tracker
			if trackerListen != "" {
				t := tracker.New(tracker.DefaultTTL)
				ca, cert, key, err := pieces.LoadTLSFiles(pf.ca, pf.cert, pf.key)
				if err != nil {
					return err
				}
				serverTLS, err := pieces.ServerTLSConfig(ca, cert, key)
				if err != nil {
					return err
				}
				ln, err := net.Listen("tcp", trackerListen)
				if err != nil {
					return fmt.Errorf("--tracker-listen %s: %w", trackerListen, err)
				}
				tsrv := httpserve.New(t.Handler(), serverTLS, nil)
				go tsrv.ServeTLS(ln, "", "")
				defer tsrv.Close()
				slog.Info("tracker listening", "listen", trackerListen)
				tr = localTracker{t}
			}
			peer, err := pf.start(nil)
			if err != nil {
				return err
			}
			defer peer.stop()
			if tr == nil && trackerURL != "" {
				tr = fetch.NewHTTPTracker(trackerURL, peer.client)
			}
			if tr == nil {
				tr = fetch.StaticPeers(nil)
			}
			f := fetch.New(peer.store, tr, fetch.Options{Self: peer.self, Client: peer.client})
			for _, s := range seeds {
				list, err := peer.store.Add(ctx, s, ps)
				if err != nil {
					return err
				}
				if err := f.Seed(ctx, list); err != nil {
					return fmt.Errorf("seed %s: %w", s, err)
				}
				slog.Info("seeding", "file", s, "digest", list.Digest, "size", list.Size, "pieces", list.Count())
			}
			go f.Run(ctx)
			select {
			case <-ctx.Done():
				return nil
			case err := <-peer.errC:
				return fmt.Errorf("piece server: %w", err)
			}
		},
	}
	pf.register(cmd, "seed")
	cmd.Flags().StringArrayVar(&seeds, "seed", nil, "file to add to the store and announce (repeatable)")
	cmd.Flags().StringVar(&trackerListen, "tracker-listen", "", "also run the tracker on this address, host:port")
	cmd.Flags().StringVar(&pieceSize, "piece-size", "", "piece size for --seed files, as for flotilla blob pieces (default: chosen by size)")
	cmd.Flags().StringVar(&trackerURL, "tracker", "", "tracker to announce to, https://host:port (default: the one from --tracker-listen)")
	return cmd
}

func newBlobFetchCmd() *cobra.Command {
	var (
		pf               blobPeerFlags
		listFile, trURL  string
		rateLimit, peers string
		seedID           string
		exitWhenDone     bool
		stall, giveUp    time.Duration
		concurrency      int
	)
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Fetch a blob from peers while serving its pieces to them",
		Long: `Fetch a blob described by a piece list from the peers the tracker knows,
serving the pieces it holds to the others meanwhile. When the blob is complete
and verified it prints one JSON line {"event":"done",...} on stdout and keeps
serving until stopped (or exits with --exit-when-done).`,
		Example: `  flotilla blob fetch --list pieces.json --tracker https://10.0.0.1:7444 --dir /tmp/n1 \
      --listen 10.0.0.11:7443 --id n1 --ca ca.pem --cert n1.pem --key n1-key.pem --rate-limit 50MB/s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := os.ReadFile(listFile)
			if err != nil {
				return fmt.Errorf("--list: %w", err)
			}
			var list pieces.PieceList
			if err := json.Unmarshal(b, &list); err != nil {
				return fmt.Errorf("--list %s: %w", listFile, err)
			}
			if err := list.Validate(); err != nil {
				return fmt.Errorf("--list %s: %w", listFile, err)
			}
			down, err := bandwidth.Parse(rateLimit)
			if err != nil {
				return fmt.Errorf("--rate-limit: %w", err)
			}
			var allow func(pieces.Peer) bool
			switch peers {
			case "swarm":
			case "seed-only":
				allow = func(p pieces.Peer) bool { return p.ID == seedID }
			default:
				return fmt.Errorf("--peers %q: want swarm or seed-only", peers)
			}
			peer, err := pf.start(nil)
			if err != nil {
				return err
			}
			defer peer.stop()
			var lastLog time.Time
			f := fetch.New(peer.store, fetch.NewHTTPTracker(trURL, peer.client), fetch.Options{
				Self: peer.self, Client: peer.client, DownloadLimit: pieces.NewLimiter(int64(down)), AllowPeer: allow,
				StallTimeout: stall, GiveUpAfter: giveUp, Concurrency: concurrency,
				Progress: func(p fetch.Progress) {
					if time.Since(lastLog) > time.Second || p.Done {
						lastLog = time.Now()
						slog.Info("fetch progress", "digest", p.Digest, "held", p.Held, "total", p.Total, "rateMBps", fmt.Sprintf("%.1f", p.Rate/1e6), "peers", p.Peers)
					}
				},
			})
			start := time.Now()
			path, err := f.Fetch(ctx, list)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{
				"event": "done", "digest": list.Digest, "path": path, "id": pf.id,
				"seconds": time.Since(start).Seconds(), "unixNano": time.Now().UnixNano(),
			})
			if exitWhenDone {
				return nil
			}
			go f.Run(ctx)
			select {
			case <-ctx.Done():
				return nil
			case err := <-peer.errC:
				return fmt.Errorf("piece server: %w", err)
			}
		},
	}
	pf.register(cmd, hostnameOr("agent"))
	cmd.Flags().StringVar(&listFile, "list", "", "piece list JSON, as printed by flotilla blob pieces (required)")
	cmd.Flags().StringVar(&trURL, "tracker", "", "tracker URL, https://host:port (required)")
	cmd.Flags().StringVar(&rateLimit, "rate-limit", "", "cap on bytes fetched, e.g. 50MB/s or 100mbit (default none)")
	cmd.Flags().StringVar(&peers, "peers", "swarm", "swarm (peer-to-peer) or seed-only (peer-to-peer off)")
	cmd.Flags().StringVar(&seedID, "seed-id", "seed", "peer ID of the seed, for --peers=seed-only")
	cmd.Flags().BoolVar(&exitWhenDone, "exit-when-done", false, "exit once the blob is complete instead of serving on")
	cmd.Flags().DurationVar(&stall, "stall-timeout", 5*time.Second, "abandon a peer that sends nothing for this long")
	cmd.Flags().DurationVar(&giveUp, "give-up-after", 2*time.Minute, "fail when no piece lands for this long")
	cmd.Flags().IntVar(&concurrency, "concurrency", 4, "pieces in flight")
	cmd.MarkFlagRequired("list")
	cmd.MarkFlagRequired("tracker")
	return cmd
}

func hostnameOr(def string) string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return def
}
