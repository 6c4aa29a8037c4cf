package dashboard

import (
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format("2006-01-02 15:04:05.000Z")
}

func fmtDur(a, b *timestamppb.Timestamp) string {
	if a == nil || b == nil {
		return ""
	}
	return b.AsTime().Sub(a.AsTime()).Round(time.Microsecond).String()
}

func attemptDuration(a *tandemv1.Attempt) string { return fmtDur(a.GetStartedAt(), a.GetFinishedAt()) }

func fmtParams(p map[string]string) string {
	if len(p) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(p)) {
		parts = append(parts, k+"="+p[k])
	}
	return strings.Join(parts, " ")
}

func fmtBytes(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
