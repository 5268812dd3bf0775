/* Wake-up latency of an idle C receiver (results/PROFILE.md). gcc -O2 -o wake wake.c && ./wake */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
static long long now(){struct timespec t;clock_gettime(CLOCK_REALTIME,&t);return t.tv_sec*1000000000LL+t.tv_nsec;}
int main(){int N=40;int r=socket(AF_INET6,SOCK_DGRAM,0);struct sockaddr_in6 a={0};a.sin6_family=AF_INET6;a.sin6_addr=in6addr_loopback;
bind(r,(void*)&a,sizeof a);socklen_t l=sizeof a;getsockname(r,(void*)&a,&l);
if(fork()==0){int s=socket(AF_INET6,SOCK_DGRAM,0);usleep(300000);for(int i=0;i<N;i++){long long t=now();sendto(s,&t,8,0,(void*)&a,sizeof a);usleep(200000);}_exit(0);}
long long lat[40];for(int i=0;i<N;i++){struct pollfd p={r,POLLIN,0};poll(&p,1,1000);long long t;recv(r,&t,8,0);lat[i]=(now()-t)/1000;}
wait(NULL);for(int i=0;i<N;i++)for(int j=i+1;j<N;j++)if(lat[j]<lat[i]){long long x=lat[i];lat[i]=lat[j];lat[j]=x;}
printf("C poll median us %lld p90 %lld\n",lat[N/2],lat[N*9/10]);}
