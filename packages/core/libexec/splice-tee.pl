#!/usr/bin/perl
# splice-tee FILE... — copies standard input to every FILE and to standard output, like
# `tee -p` (an output whose reader went away is dropped; the rest go on), without copying the
# bytes through this process: tee(2) duplicates pipe pages into each output and splice(2) moves
# them on. coreutils' tee copies every byte in and out in 8 KiB pieces; on a one-pass backup that
# was the largest cost after compression (bench/README.md). `--check` says whether this kernel
# and architecture can run it (exit 0), so the core can fall back to coreutils' tee.
#
# The outputs are served in order through private pipes: q[j] holds the bytes output j has yet
# to get; a tee into output j returns how many it took, and exactly those move on to q[j+1],
# which is empty by then (each piece goes all the way through before the next is taken).
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
# Every private pipe has the same capacity (a resize can fail), so a piece that fits one fits the next.
my @q = map { newpipe() } @out;
my ($capacity) = sort { $a <=> $b } map { fcntl($_->{w}, $F_GETPIPE_SZ, 0) } @q;
fcntl($_->{w}, $F_SETPIPE_SZ, $capacity) for @q;

sub failed { my ($o) = @_; print STDERR "splice-tee: $o->{name}: $!\n"; exit 1 }

# Reads and writes $n bytes of pipe $in: for an output splice cannot write (a file opened for appending).
sub copy {
  my ($in, $o, $n) = @_;
  open(my $ih, '<&=', $in) or die "splice-tee: $!\n";
  while ($n > 0) {
    my $r = sysread($ih, my $buf, $n < (1 << 20) ? $n : 1 << 20);
    die "splice-tee: private pipe: $!\n" unless $r;
    for (my $off = 0; $off < $r;) {
      my $w = syswrite($o->{fh}, $buf, $r - $off, $off);
      return -1 unless defined $w;
      $off += $w;
    }
    $n -= $r;
  }
  return 0;
}

# Moves exactly $n bytes from pipe $in to $fd (splice consumes what it moved: a short count goes on).
sub move {
  my ($in, $fd, $n, $o) = @_;
  while ($n > 0) {
    my $m = splice_($in, $fd, $n);
    return copy($in, $o, $n) if $m < 0 && $! == EINVAL && $o;
    return -1 if $m < 0;
    die "splice-tee: a private pipe ended early\n" if $m == 0;
    $n -= $m;
  }
  return 0;
}

# Gives output $o up to $n bytes from the head of pipe $in without consuming them; returns how many.
sub give {
  my ($in, $o, $n) = @_;
  my $m = $o->{stage} ? -1 : tee_($in, $o->{fd}, $n);
  if ($o->{stage} || ($m < 0 && $! == EINVAL)) { # not a pipe: through a pipe of its own
    $o->{stage} //= newpipe();
    $m = tee_($in, fileno($o->{stage}{w}), $n);
    return $m if $m < 0;
    return move(fileno($o->{stage}{r}), $o->{fd}, $m, $o) < 0 ? -1 : $m;
  }
  return $m;
}

# The reader of $o went away (a socket pair can say so with a reset): it is dropped, like `tee -p` does.
sub drop {
  my ($o) = @_;
  failed($o) unless $! == EPIPE || $! == ECONNRESET;
  $o->{alive} = 0;
  $alive--;
}

# q[$j] holds $n bytes: output $j gets them, then they move on to the next output's pipe.
sub through {
  my ($j, $n) = @_;
  my ($o, $in) = ($out[$j], fileno($q[$j]{r}));
  if ($j == $#out) {
    if ($o->{alive} && move($in, $o->{fd}, $n, $o) < 0) { drop($o) }
    if (!$o->{alive}) { open(my $null, '>', '/dev/null') or die; move($in, fileno($null), $n, { fh => $null }) }
    return;
  }
  while ($n > 0) {
    my $m = $n;
    if ($o->{alive}) {
      $m = give($in, $o, $n);
      if ($m < 0) { drop($o); $m = $n }
    }
    move($in, fileno($q[$j + 1]{w}), $m) == 0 or die "splice-tee: private pipe: $!\n";
    through($j + 1, $m);
    $n -= $m;
  }
}

my $first = fileno($q[0]{w});
while ($alive > 0) {
  my $n = splice_(0, $first, $PIPE_SIZE);
  if ($n < 0 && $! == EINVAL) { # standard input is something splice cannot read: read it
    $n = sysread(STDIN, my $buf, $capacity);
    die "splice-tee: standard input: $!\n" unless defined $n;
    for (my $off = 0; $off < $n;) { $off += syswrite($q[0]{w}, $buf, $n - $off, $off) // die "splice-tee: private pipe: $!\n" }
  }
  die "splice-tee: standard input: $!\n" if $n < 0;
  last if $n == 0;
  through(0, $n);
}
exit 0;
