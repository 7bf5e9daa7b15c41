// Package registry moves cluster images between the local store and any OCI registry
// (push, pull) and keeps registry credentials in Docker's config format (login, logout).
package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/regclient"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// Options configures registry access.
type Options struct {
	Insecure  bool              // plain HTTP (and no TLS verification)
	Keychain  authn.Keychain    // nil: Docker's config ($DOCKER_CONFIG or ~/.docker)
	Transport http.RoundTripper // nil: http.DefaultTransport
	Progress  progress.Reporter // nil: silent
	Jobs      int               // parallel blob uploads; 0: 4
	Timeout   time.Duration     // bound on a whole push or pull; 0: one hour
}

func (o Options) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return time.Hour
}

func (o Options) nameOpts() []name.Option { return regclient.NameOptions(o.Insecure) }

func (o Options) remoteOpts(ctx context.Context) []remote.Option {
	opts := regclient.RemoteOptions(ctx, o.Keychain, o.Transport)
	jobs := o.Jobs
	if jobs == 0 {
		jobs = 4
	}
	return append(opts, remote.WithJobs(jobs))
}

// Push uploads the image src names in st to the registry reference dest (src's name
// when dest is empty). Blobs the registry already has are not uploaded again.
func Push(ctx context.Context, st *store.Store, src, dest string, o Options) (v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout())
	defer cancel()
	desc, err := st.Get(src)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if dest == "" {
		dest = src
	}
	ref, err := name.ParseReference(dest, o.nameOpts()...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push %s: %w", dest, err)
	}
	rep := progress.OrNop(o.Progress)
	updates := make(chan v1.Update, 16)
	bar := rep.Start("push "+dest, -1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last int64
		for u := range updates {
			if u.Complete > last {
				bar.Add(u.Complete - last)
				last = u.Complete
			}
		}
	}()
	opts := append(o.remoteOpts(ctx), remote.WithProgress(updates))
	if desc.MediaType.IsIndex() {
		idx, ierr := st.Index(desc.Digest)
		if ierr != nil {
			return v1.Descriptor{}, ierr
		}
		err = remote.WriteIndex(ref, idx, opts...)
	} else {
		img, ierr := st.Image(desc.Digest)
		if ierr != nil {
			return v1.Descriptor{}, ierr
		}
		err = remote.Write(ref, img, opts...)
	}
	<-done // remote closes the updates channel when it is done
	bar.Done(err)
	rep.Wait()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push %s: %w%s", dest, err, hint(err))
	}
	return desc, nil
}

// Pull downloads ref (every platform of a multi-arch image) into st and names it ref.
// Every blob is verified against its digest; on any failure the store is unchanged.
func Pull(ctx context.Context, st *store.Store, ref string, o Options) (v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout())
	defer cancel()
	r, err := name.ParseReference(ref, o.nameOpts()...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	rd, err := remote.Get(r, o.remoteOpts(ctx)...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w%s", ref, err, hint(err))
	}
	tx, err := st.Begin(ctx)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer tx.Abort()
	rep := progress.OrNop(o.Progress)
	var desc v1.Descriptor
	if rd.MediaType.IsIndex() {
		idx, ierr := rd.ImageIndex()
		if ierr != nil {
			return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref, ierr)
		}
		desc, err = tx.PutIndex(ctx, idx, rep)
	} else {
		img, ierr := rd.Image()
		if ierr != nil {
			return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref, ierr)
		}
		desc, err = tx.PutImage(ctx, img, rep)
	}
	rep.Wait()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	if desc.Digest != rd.Digest {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref, &store.DigestMismatchError{Want: rd.Digest, Got: desc.Digest})
	}
	if rd.Platform != nil {
		desc.Platform = rd.Platform
	}
	if err := tx.Commit(ctx, map[string]v1.Descriptor{ref: desc}); err != nil {
		return v1.Descriptor{}, err
	}
	return desc, nil
}

// hint says what to do next for the usual registry failures.
func hint(err error) string {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return " (run flotilla login REGISTRY)"
		case http.StatusNotFound:
			return " (check the name and tag)"
		}
	}
	return ""
}

// Login checks user/password against the registry and stores them in Docker's config
// file, where push, pull, docker and crane find them.
func Login(ctx context.Context, registry, user, password string, o Options) error {
	reg, err := name.NewRegistry(registry, o.nameOpts()...)
	if err != nil {
		return fmt.Errorf("login %s: %w", registry, err)
	}
	tr := o.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	auth := &authn.Basic{Username: user, Password: password}
	rt, err := transport.NewWithContext(ctx, reg, auth, tr, []string{reg.Scope(transport.PullScope)})
	if err != nil {
		return fmt.Errorf("login %s: %w%s", registry, err, hint(err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s/v2/", reg.Scheme(), reg.RegistryStr()), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return fmt.Errorf("login %s: %w", registry, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("login %s: the registry refused user %q (%s): check the user and password", registry, user, resp.Status)
	}
	cf, err := config.Load(config.Dir())
	if err != nil {
		return fmt.Errorf("login %s: read Docker config: %w", registry, err)
	}
	key := configKey(reg)
	if err := cf.GetCredentialsStore(key).Store(types.AuthConfig{ServerAddress: key, Username: user, Password: password}); err != nil {
		return fmt.Errorf("login %s: store credentials: %w", registry, err)
	}
	if err := cf.Save(); err != nil {
		return fmt.Errorf("login %s: write %s: %w", registry, cf.Filename, err)
	}
	return nil
}

// Logout removes the registry's credentials from Docker's config file.
func Logout(registry string) error {
	reg, err := name.NewRegistry(registry)
	if err != nil {
		return fmt.Errorf("logout %s: %w", registry, err)
	}
	cf, err := config.Load(config.Dir())
	if err != nil {
		return fmt.Errorf("logout %s: read Docker config: %w", registry, err)
	}
	key := configKey(reg)
	if _, ok := cf.AuthConfigs[key]; !ok {
		return fmt.Errorf("logout %s: not logged in (no entry in %s)", registry, cf.Filename)
	}
	if err := cf.GetCredentialsStore(key).Erase(key); err != nil {
		return fmt.Errorf("logout %s: %w", registry, err)
	}
	return cf.Save()
}

func configKey(reg name.Registry) string {
	if reg.RegistryStr() == name.DefaultRegistry {
		return authn.DefaultAuthKey
	}
	return reg.RegistryStr()
}
