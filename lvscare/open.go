package lvscare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
	"github.com/flotilla-dev/flotilla/lvscare/ipvs"
	"github.com/flotilla-dev/flotilla/lvscare/nftables"
)

// OpenDataplane returns the named dataplane: "ipvs", "nftables", or "auto", which
// picks IPVS where the kernel has it and nftables otherwise.
func OpenDataplane(name string, log *slog.Logger) (dataplane.Dataplane, error) {
	if log == nil {
		log = slog.Default()
	}
	switch name {
	case "ipvs":
		return ipvs.New(log)
	case "nftables":
		if err := nftables.Supported(); err != nil {
			return nil, fmt.Errorf("nftables dataplane: %w", err)
		}
		return nftables.New(nftables.Options{Log: log}), nil
	case "auto":
		err := ipvs.Supported()
		if err == nil {
			log.Info("dataplane auto: kernel has IPVS, using it")
			return ipvs.New(log)
		}
		log.Info("dataplane auto: using nftables", "ipvs", err)
		if err := nftables.Supported(); err != nil {
			return nil, fmt.Errorf("dataplane auto: neither IPVS nor nftables works here: %w", err)
		}
		return nftables.New(nftables.Options{Log: log}), nil
	}
	return nil, fmt.Errorf("dataplane %q: want auto, nftables or ipvs", name)
}

// Clean removes everything lvscare created with the named dataplane; "auto" cleans
// every dataplane the kernel supports, since an earlier run may have picked either.
func Clean(ctx context.Context, name string, log *slog.Logger) error {
	var errs []error
	if name == "nftables" || name == "auto" {
		if err := nftables.New(nftables.Options{Log: log}).Clean(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean nftables: %w", err))
		}
	}
	if name == "auto" && ipvs.Supported() != nil {
		// No IPVS now, but an IPVS run may have left its masquerade table.
		if err := nftables.NewMasquerade("").Remove(); err != nil {
			errs = append(errs, fmt.Errorf("clean ipvs masquerade table: %w", err))
		}
	}
	if name == "ipvs" || (name == "auto" && ipvs.Supported() == nil) {
		dp, err := ipvs.New(log)
		if err == nil {
			err = dp.Clean(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("clean ipvs: %w", err))
		}
	}
	return errors.Join(errs...)
}
