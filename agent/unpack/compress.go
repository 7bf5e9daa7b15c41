package unpack

import (
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func gunzip(r io.Reader) (io.Reader, func(), error) {
	z, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("gzip: %w", err)
	}
	return z, func() { z.Close() }, nil
}

func unzstd(r io.Reader) (io.Reader, func(), error) {
	// A 1 GiB window bound keeps a hostile frame header from allocating without limit.
	z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		return nil, nil, fmt.Errorf("zstd: %w", err)
	}
	return z, z.Close, nil
}
