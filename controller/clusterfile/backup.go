package clusterfile

import (
	"time"

	"go.yaml.in/yaml/v3"
)

// Bounds of spec.backup.
const (
	MinBackupEvery = time.Minute
	MaxBackupKeep  = 10000
)

// Backup is spec.backup: the controller backs the cluster up every Every (with the
// image's BACKUP command) and keeps the newest Keep backups of it.
type Backup struct {
	Every time.Duration
	Keep  int
	Line  int
}

func (p *parser) backup(n *yaml.Node, field string) *Backup {
	b := &Backup{Line: n.Line}
	var sawEvery, sawKeep bool
	p.fields(n, field, map[string]func(*yaml.Node, string){
		"every": func(v *yaml.Node, f string) {
			sawEvery = true
			s := p.str(v, f)
			d, err := time.ParseDuration(s)
			if err != nil || d < MinBackupEvery {
				p.errf(v, f, "%q is not a duration of at least %s like 6h or 30m", s, MinBackupEvery)
				return
			}
			b.Every = d
		},
		"keep": func(v *yaml.Node, f string) {
			sawKeep = true
			b.Keep = p.integer(v, f, 1)
			if b.Keep > MaxBackupKeep {
				p.errf(v, f, "%d: at most %d backups are kept", b.Keep, MaxBackupKeep)
			}
		},
	})
	if n.Kind == yaml.MappingNode {
		if !sawEvery {
			p.errf(n, field+".every", "missing: how often to back up, like 6h")
		}
		if !sawKeep {
			p.errf(n, field+".keep", "missing: how many backups to keep, at least 1")
		}
	}
	return b
}
