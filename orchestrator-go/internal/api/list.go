package api

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
)

// ListJobs limits.
const (
	defaultListLimit = 50
	maxListLimit     = 500
	defaultListScan  = 5000
	maxListScan      = 50000
)

// ListJobs implements JobService: it reads the newest `scan` records of the
// job bucket's stream (History 1: one message per live key) and filters them.
func (s *Service) ListJobs(ctx context.Context, req *tandemv1.ListJobsRequest) (*tandemv1.ListJobsResponse, error) {
	return wrap(s.listJobs(ctx, req))
}

func (s *Service) listJobs(ctx context.Context, req *tandemv1.ListJobsRequest) (*tandemv1.ListJobsResponse, error) {
	if q := req.GetQueue(); q != "" {
		if err := ident.Queue("queue", q); err != nil {
			return nil, err
		}
		if err := auth.Require(ctx, q, auth.Read); err != nil {
			return nil, err
		}
	}
	if k := req.GetLabelKey(); k != "" {
		if err := ident.LabelKey("label_key", k); err != nil {
			return nil, err
		}
	}
	if err := ident.Text("label_value", req.GetLabelValue(), ident.MaxLabelValue); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	scan := int(req.GetScan())
	if scan <= 0 {
		scan = defaultListScan
	}
	scan = min(scan, maxListScan)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	stream, err := s.Broker.JS().Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	last := stream.CachedInfo().State.LastSeq
	first := stream.CachedInfo().State.FirstSeq
	out := &tandemv1.ListJobsResponse{}
	if last == 0 || stream.CachedInfo().State.Msgs == 0 {
		return out, nil
	}
	start := first
	if last >= uint64(scan) && last-uint64(scan)+1 > first {
		start = last - uint64(scan) + 1
		out.Truncated = true
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{broker.JobKVSubject(">")}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
	})
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	var jobs []*tandemv1.Job
	for done := false; !done; {
		batch, err := cons.Fetch(512, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, apierr.BrokerUnavailable(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			out.Scanned++
			md, err := m.Metadata()
			if err != nil {
				return nil, apierr.BrokerUnavailable(err)
			}
			if md.NumPending == 0 || md.Sequence.Stream >= last {
				done = true
			}
			if op := m.Headers().Get("KV-Operation"); op != "" || len(m.Data()) == 0 {
				continue // a delete, purge or expiry marker
			}
			j := &tandemv1.Job{}
			if proto.Unmarshal(m.Data(), j) != nil || !matches(j, req) || !auth.Can(ctx, j.GetQueue(), auth.Read) {
				continue
			}
			j.Result = nil
			jobs = append(jobs, j)
		}
		if n == 0 {
			break
		}
	}
	// Newest first: ids are ULIDs, sortable by creation time.
	slices.SortFunc(jobs, func(a, b *tandemv1.Job) int { return strings.Compare(b.GetId(), a.GetId()) })
	if len(jobs) > limit {
		jobs = jobs[:limit]
	}
	out.Jobs = jobs
	return out, nil
}

func matches(j *tandemv1.Job, req *tandemv1.ListJobsRequest) bool {
	if q := req.GetQueue(); q != "" && j.GetQueue() != q {
		return false
	}
	if st := req.GetState(); st != tandemv1.JobState_JOB_STATE_UNSPECIFIED && j.GetState() != st {
		return false
	}
	if k := req.GetLabelKey(); k != "" {
		v, ok := j.GetLabels()[k]
		if !ok || req.GetLabelValue() != "" && v != req.GetLabelValue() {
			return false
		}
	}
	return true
}
