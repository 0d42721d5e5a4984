#!/usr/bin/perl
# splice-tee FILE... — copies standard input to every FILE and to standard output, like
# `tee -p` (an output whose reader went away is dropped; the rest go on), without copying the
# bytes through this process: tee(2) duplicates pipe pages into each output and splice(2) moves
# them on. coreutils' tee copies every byte in and out in 8 KiB pieces; on a one-pass backup that
# was the largest cost after compression (bench/README.md). `--check` says whether this kernel
# and architecture can run it (exit 0), so the core can fall back to coreutils' tee.
#
# Each piece of input is spliced into a private pipe q; every output but the last gets it by a
# tee from q (which leaves it there), the last by a splice (which takes it). A tee that takes only
# part of a piece (its output had less room) gets the rest from a copy of the piece in a second
# private pipe, its first part dropped.
use strict;
use warnings;
use Config;
use Errno qw(ECONNRESET EINTR EINVAL EPIPE);

my %SYSCALLS = (x86_64 => [275, 276], aarch64 => [76, 77]); # splice, tee
my ($SYS_splice, $SYS_tee) = @{ $SYSCALLS{ (split /-/, $Config{archname})[0] } // [] };
my ($F_SETPIPE_SZ, $F_GETPIPE_SZ) = (1031, 1032);
my $PIPE_SIZE = 1 << 18; # 256 KiB: fewer, larger moves; F_SETPIPE_SZ failing (a user's pipe quota) is harmless
$SIG{PIPE} = 'IGNORE';

sub sys { my ($nr, @args) = @_; my $n; do { $n = syscall($nr, @args) } while ($n < 0 && $! == EINTR); return $n }
sub splice_ { my ($in, $out, $len) = @_; return sys($SYS_splice, $in, 0, $out, 0, $len, 0) }
sub tee_ { my ($in, $out, $len) = @_; return sys($SYS_tee, $in, $out, $len, 0) }
sub newpipe { pipe(my $r, my $w) or die "splice-tee: pipe: $!\n"; fcntl($w, $F_SETPIPE_SZ, $PIPE_SIZE); return { r => $r, w => $w } }

if (@ARGV == 1 && $ARGV[0] eq '--check') {
  exit 2 unless $SYS_splice;
  my ($a, $b) = (newpipe(), newpipe());
  syswrite($a->{w}, 'x') == 1 or exit 3;
  exit(tee_(fileno($a->{r}), fileno($b->{w}), 1) == 1 && splice_(fileno($a->{r}), fileno($b->{w}), 1) == 1 ? 0 : 4);
}
die "splice-tee: unsupported architecture $Config{archname}\n" unless $SYS_splice;
shift @ARGV if @ARGV && $ARGV[0] eq '--';

my @out;
for my $name (@ARGV) {
  open(my $fh, '>', $name) or die "splice-tee: $name: $!\n";
  fcntl($fh, $F_SETPIPE_SZ, $PIPE_SIZE);
  push @out, { fh => $fh, name => $name };
}
fcntl(STDIN, $F_SETPIPE_SZ, $PIPE_SIZE);
fcntl(STDOUT, $F_SETPIPE_SZ, $PIPE_SIZE);
push @out, { fh => \*STDOUT, name => 'standard output' };
$_->{fd} = fileno($_->{fh}), $_->{alive} = 1 for @out;
my $alive = @out;
open(my $null, '>', '/dev/null') or die "splice-tee: /dev/null: $!\n";
my $devnull = { fh => $null, fd => fileno($null) };

# Both private pipes have the same capacity (a resize can fail), so a piece that fits one fits the other.
my ($q, $copy) = (newpipe(), newpipe());
my ($capacity) = sort { $a <=> $b } map { fcntl($_->{w}, $F_GETPIPE_SZ, 0) } $q, $copy;
fcntl($_->{w}, $F_SETPIPE_SZ, $capacity) for $q, $copy;
my ($qr, $qw, $cr, $cw) = (fileno($q->{r}), fileno($q->{w}), fileno($copy->{r}), fileno($copy->{w}));

sub failed { my ($o) = @_; print STDERR "splice-tee: $o->{name}: $!\n"; exit 1 }

# Reads and writes $n bytes of pipe $in, for an output splice cannot write (a file opened for
# appending). Returns (1) when all were written, else (0, how many are left in the pipe), $! saying why.
sub copy {
  my ($in, $o, $n) = @_;
  open(my $ih, '<&=', $in) or die "splice-tee: $!\n";
  while ($n > 0) {
    my $r = sysread($ih, my $buf, $n < (1 << 20) ? $n : 1 << 20);
    die "splice-tee: private pipe: $!\n" unless $r;
    for (my $off = 0; $off < $r;) {
      my $w = syswrite($o->{fh}, $buf, $r - $off, $off);
      return (0, $n - $r) unless defined $w;
      $off += $w;
    }
    $n -= $r;
  }
  return (1);
}

# Moves $n bytes from pipe $in to output $o (splice takes what it moved: a short count goes on).
# Returns (1) when all were moved, else (0, how many are left in the pipe), $! saying why.
sub move {
  my ($in, $o, $n) = @_;
  while ($n > 0) {
    my $m = splice_($in, $o->{fd}, $n);
    return copy($in, $o, $n) if $m < 0 && $! == EINVAL;
    return (0, $n) if $m < 0;
    die "splice-tee: a private pipe ended early\n" if $m == 0;
    $n -= $m;
  }
  return (1);
}

# Drops what is left in pipe $in after a failed move, keeping the move's $!.
sub discard {
  my ($in, $n) = @_;
  my $why = $!;
  (move($in, $devnull, $n))[0] or die "splice-tee: /dev/null: $!\n";
  $! = $why;
}

# Gives output $o the $n bytes in q, leaving them there; false when it failed ($! says why).
sub give {
  my ($o, $n) = @_;
  my $m = $o->{staged} ? 0 : tee_($qr, $o->{fd}, $n);
  if ($m < 0) {
    return 0 unless $! == EINVAL;
    $o->{staged} = 1; # not a pipe: every piece goes through the copy
    $m = 0;
  }
  return 1 if $m == $n;
  tee_($qr, $cw, $n) == $n or die "splice-tee: private pipe: $!\n";
  discard($cr, $m) if $m > 0;
  my ($ok, $left) = move($cr, $o, $n - $m);
  discard($cr, $left) if !$ok && $left;
  return $ok;
}

# The reader of $o went away (a socket pair can say so with a reset): it is dropped, like `tee -p` does.
sub drop {
  my ($o) = @_;
  failed($o) unless $! == EPIPE || $! == ECONNRESET;
  $o->{alive} = 0;
  $alive--;
}

my $last = $out[-1];
while ($alive > 0) {
  my $n = splice_(0, $qw, $capacity);
  if ($n < 0 && $! == EINVAL) { # standard input is something splice cannot read: read it
    $n = sysread(STDIN, my $buf, $capacity);
    die "splice-tee: standard input: $!\n" unless defined $n;
    for (my $off = 0; $off < $n;) { $off += syswrite($q->{w}, $buf, $n - $off, $off) // die "splice-tee: private pipe: $!\n" }
  }
  die "splice-tee: standard input: $!\n" if $n < 0;
  last if $n == 0;
  for my $o (@out[0 .. $#out - 1]) { drop($o) if $o->{alive} && !give($o, $n) }
  my ($ok, $left) = $last->{alive} ? move($qr, $last, $n) : (0, $n);
  next if $ok;
  discard($qr, $left) if $left;
  drop($last) if $last->{alive};
}
exit 0;
