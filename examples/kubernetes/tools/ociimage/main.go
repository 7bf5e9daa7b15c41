// Command ociimage packs files into a single-layer OCI image (FROM scratch) and
// writes it as an OCI image layout in a tar, the form `ctr images import` and
// registries' tools read. The output is reproducible: same inputs, same digests.
//
//	ociimage -o pause.tar -ref registry.k8s.io/pause:3.10 -user 65535:65535 \
//	    -entrypoint /pause -file /path/to/pause=/pause:0755
//	ociimage ... -symlink /bin/sh=busybox
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var files, links, entry, env listFlag
	out := flag.String("o", "", "output tar (OCI image layout)")
	ref := flag.String("ref", "", "image name with tag, e.g. registry.k8s.io/pause:3.10")
	user := flag.String("user", "", "user[:group] the image runs as")
	arch := flag.String("arch", "amd64", "architecture")
	flag.Var(&files, "file", "HOSTPATH=IMAGEPATH[:MODE] (repeatable)")
	flag.Var(&links, "symlink", "IMAGEPATH=TARGET (repeatable)")
	flag.Var(&entry, "entrypoint", "entrypoint argument (repeatable)")
	flag.Var(&env, "env", "NAME=value (repeatable)")
	flag.Parse()
	if err := run(*out, *ref, *user, *arch, files, links, entry, env); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

type blob struct {
	mediaType string
	data      []byte
}

func (b blob) digest() string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b.data)) }

func (b blob) descriptor(annotations map[string]string) map[string]any {
	d := map[string]any{"mediaType": b.mediaType, "digest": b.digest(), "size": len(b.data)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}

type entry struct {
	name, target, host string
	mode               int64
}

func run(out, ref, user, arch string, files, links, entrypoint, env []string) error {
	if out == "" || ref == "" {
		return fmt.Errorf("-o and -ref are required")
	}
	colon, slash := strings.LastIndex(ref, ":"), strings.LastIndex(ref, "/")
	if colon < slash || colon < 0 {
		return fmt.Errorf("-ref %q: want a name with a tag", ref)
	}
	var entries []entry
	for _, f := range files {
		host, img, ok := strings.Cut(f, "=")
		if !ok || !path.IsAbs(img) {
			return fmt.Errorf("-file %q: want HOSTPATH=/IMAGEPATH[:MODE]", f)
		}
		mode := int64(0o644)
		if p, m, ok := strings.Cut(img, ":"); ok {
			v, err := strconv.ParseInt(m, 8, 32)
			if err != nil {
				return fmt.Errorf("-file %q: mode: %w", f, err)
			}
			img, mode = p, v
		}
		entries = append(entries, entry{name: strings.TrimPrefix(img, "/"), host: host, mode: mode})
	}
	for _, l := range links {
		img, target, ok := strings.Cut(l, "=")
		if !ok || !path.IsAbs(img) || target == "" {
			return fmt.Errorf("-symlink %q: want /IMAGEPATH=TARGET", l)
		}
		entries = append(entries, entry{name: strings.TrimPrefix(img, "/"), target: target})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })

	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, e := range entries {
		for d := path.Dir(e.name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)
	for _, d := range dirList {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, e := range entries {
		if e.target != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: e.name, Linkname: e.target, Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return err
			}
			continue
		}
		b, err := os.ReadFile(e.host)
		if err != nil {
			return fmt.Errorf("-file %s: %w", e.host, err)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: e.mode, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if _, err := zw.Write(layerTar.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	layer := blob{"application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes()}
	diffID := fmt.Sprintf("sha256:%x", sha256.Sum256(layerTar.Bytes()))

	cfg := map[string]any{
		"architecture": arch,
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"User":       user,
			"Entrypoint": entrypoint,
			"Env":        append([]string{"PATH=/bin"}, env...),
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created": epoch.UTC().Format(time.RFC3339), "created_by": "flotilla examples/kubernetes ociimage"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	config := blob{"application/vnd.oci.image.config.v1+json", cfgJSON}
	manJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        config.descriptor(nil),
		"layers":        []any{layer.descriptor(nil)},
	})
	if err != nil {
		return err
	}
	manifest := blob{"application/vnd.oci.image.manifest.v1+json", manJSON}
	md := manifest.descriptor(map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": ref[colon+1:],
	})
	md["platform"] = map[string]string{"architecture": arch, "os": "linux"}
	indexJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md},
	})
	if err != nil {
		return err
	}

	var o bytes.Buffer
	ow := tar.NewWriter(&o)
	put := func(name string, data []byte) error {
		if err := ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := ow.Write(data)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", indexJSON); err != nil {
		return err
	}
	for _, b := range []blob{config, layer, manifest} {
		if err := put("blobs/sha256/"+strings.TrimPrefix(b.digest(), "sha256:"), b.data); err != nil {
			return err
		}
	}
	if err := ow.Close(); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, o.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	fmt.Printf("ociimage: %s %s (%s)\n", out, ref, manifest.digest())
	return nil
}
