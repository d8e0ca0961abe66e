package tracing

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Stats are the Tracer's counters since New. Every started span ends up in exactly one of
// Exported or a Dropped count once it has ended and the queue has been flushed, so after
// Shutdown: Started == Exported + DroppedQueueFull + DroppedExportFailed + DroppedShutdown.
type Stats struct {
	Started             uint64 // sampled (recording) spans started
	Exported            uint64 // spans the collector accepted
	DroppedQueueFull    uint64 // spans dropped at end because the export queue was full
	DroppedExportFailed uint64 // spans in batches whose export failed (collector down, timeout)
	DroppedShutdown     uint64 // spans that ended after Shutdown began
	ExportErrors        uint64 // failed export requests (one per batch)
	Queued              int    // spans waiting for export now
	QueueCapacity       int
}

// Dropped is the sum of the dropped counts.
func (s Stats) Dropped() uint64 {
	return s.DroppedQueueFull + s.DroppedExportFailed + s.DroppedShutdown
}

// batcher is the Tracer's span processor: a bounded queue between span End and one export
// goroutine. It replaces the SDK's BatchSpanProcessor, which drops spans silently when its
// queue is full (its count is private, reported only through an experimental metrics
// feature): here every drop is counted, by reason.
//
// OnEnd never blocks: a full queue drops the span. The loop sends a batch when it has
// BatchSize spans or when its oldest span has waited BatchDelay; one export runs at a time,
// bounded by the export timeout, so a hung collector costs queue space (then drops), never
// request latency. The timer runs only while a partial batch waits, so an idle sidecar
// never wakes up.
type batcher struct {
	exp       sdktrace.SpanExporter
	queue     chan sdktrace.ReadOnlySpan
	batchSize int
	delay     time.Duration
	timeout   time.Duration
	log       *slog.Logger

	ctx    context.Context // cancelled when Shutdown's deadline passes: aborts exports
	cancel context.CancelFunc
	flush  chan chan struct{}
	stop   chan struct{}
	done   chan struct{}

	stopping atomic.Bool
	started  atomic.Uint64
	exported atomic.Uint64
	dQueue   atomic.Uint64
	dExport  atomic.Uint64
	dStop    atomic.Uint64
	errs     atomic.Uint64

	failing bool // loop only: the last export failed (for logging transitions once)
}

func newBatcher(ctx context.Context, exp sdktrace.SpanExporter, s settings, log *slog.Logger) *batcher {
	b := &batcher{
		exp:       exp,
		queue:     make(chan sdktrace.ReadOnlySpan, s.queueSize),
		batchSize: s.batchSize,
		delay:     s.batchDelay,
		timeout:   s.timeout,
		log:       log,
		flush:     make(chan chan struct{}),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	// The loop outlives New's context; only Shutdown ends it.
	b.ctx, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go b.run()
	return b
}

// OnStart counts the span. It is called only for recording (sampled) spans.
func (b *batcher) OnStart(context.Context, sdktrace.ReadWriteSpan) { b.started.Add(1) }

// OnEnd queues the span for export, or drops and counts it. It never blocks.
func (b *batcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if b.stopping.Load() {
		b.dStop.Add(1)
		return
	}
	select {
	case b.queue <- s:
	default:
		b.dQueue.Add(1)
	}
}

func (b *batcher) run() {
	defer close(b.done)
	batch := make([]sdktrace.ReadOnlySpan, 0, b.batchSize)
	timer := time.NewTimer(b.delay)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case s := <-b.queue:
			batch = append(batch, s)
			if len(batch) == 1 {
				timer.Reset(b.delay)
			}
			if len(batch) >= b.batchSize {
				timer.Stop()
				batch = b.export(batch)
			}
		case <-timer.C:
			batch = b.export(batch)
		case ack := <-b.flush:
			timer.Stop()
			batch = b.drain(batch)
			close(ack)
		case <-b.stop:
			b.drain(batch)
			return
		}
	}
}

// drain exports everything queued now, in batches.
func (b *batcher) drain(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	for {
		select {
		case s := <-b.queue:
			batch = append(batch, s)
			if len(batch) >= b.batchSize {
				batch = b.export(batch)
			}
		default:
			return b.export(batch)
		}
	}
}

// export sends one batch and counts the outcome. The exporter must not keep the slice.
func (b *batcher) export(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	err := b.exp.ExportSpans(ctx, batch)
	cancel()
	n := uint64(len(batch))
	if err != nil {
		b.errs.Add(1)
		b.dExport.Add(n)
		if !b.failing {
			b.failing = true
			b.log.Warn("tracing: span export failing; dropping spans until it recovers",
				"spans", n, "err", err)
		}
	} else {
		b.exported.Add(n)
		if b.failing {
			b.failing = false
			b.log.Info("tracing: span export recovered")
		}
	}
	clear(batch)
	return batch[:0]
}

// ForceFlush exports every span queued before the call. It returns ctx's error if ctx ends
// first (the flush still completes in the background).
func (b *batcher) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case b.flush <- ack:
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops taking spans, exports what is queued and shuts the exporter down. When
// ctx ends first, the export in flight is aborted (its spans count as export failures) and
// Shutdown returns ctx's error once the loop has stopped, which it then does promptly: no
// goroutine is left behind. The SDK calls it once.
func (b *batcher) Shutdown(ctx context.Context) error {
	if !b.stopping.CompareAndSwap(false, true) {
		return nil
	}
	close(b.stop)
	var err error
	select {
	case <-b.done:
	case <-ctx.Done():
		err = ctx.Err()
		b.cancel()
		<-b.done
	}
	b.cancel()
	// A span that passed OnEnd's stopping check just before it was set may have landed
	// after the loop's last drain.
	for {
		select {
		case <-b.queue:
			b.dStop.Add(1)
			continue
		default:
		}
		break
	}
	if xerr := b.exp.Shutdown(ctx); xerr != nil && err == nil {
		err = xerr
	}
	return err
}

func (b *batcher) stats() Stats {
	return Stats{
		Started:             b.started.Load(),
		Exported:            b.exported.Load(),
		DroppedQueueFull:    b.dQueue.Load(),
		DroppedExportFailed: b.dExport.Load(),
		DroppedShutdown:     b.dStop.Load(),
		ExportErrors:        b.errs.Load(),
		Queued:              len(b.queue),
		QueueCapacity:       cap(b.queue),
	}
}

var _ sdktrace.SpanProcessor = (*batcher)(nil)
